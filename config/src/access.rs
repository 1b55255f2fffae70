//! `[access]` and `[[policies]]`: what each login role sees of each encrypted
//! column (the seed's `sensitive_data_access_policies` and
//! `data_masking_rules`).

use serde::Deserialize;

use crate::columns::{Column, LogicalType};

/// `[access]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Access {
    /// What a role gets of an encrypted column no `[[policies]]` rule names
    /// it for. Default `deny`: a role sees nothing it was not granted.
    /// SIGHUP applies it from the next statement.
    pub default: AccessLevel,
    /// The mask of `default = "masked"`. Default none (then required).
    pub mask: Option<String>,
}

impl Default for Access {
    fn default() -> Self {
        Self { default: AccessLevel::Deny, mask: None }
    }
}

/// What a role gets of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    /// The decrypted value.
    Full,
    /// The decrypted value, masked; reported to the client as text.
    Masked,
    /// The envelope itself, as bytea (backup and ETL roles).
    Ciphertext,
    /// Nothing: a statement that reads the column or filters on it fails
    /// with 42501.
    Deny,
}

impl AccessLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::Full => "full",
            AccessLevel::Masked => "masked",
            AccessLevel::Ciphertext => "ciphertext",
            AccessLevel::Deny => "deny",
        }
    }
}

/// One `[[policies]]` rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Policy {
    /// Login roles it applies to; `"*"` is every role.
    pub roles: Vec<String>,
    /// Columns it applies to: `schema.table.column`, where any part may be
    /// `*` (`public.customers.*`), or `*` for every column.
    pub columns: Vec<String>,
    pub access: AccessLevel,
    /// With `access = "masked"`: `partial(prefix, 'pad', suffix)`, `email`,
    /// `last4`, `hash`, `null`, `redact('TEXT')`, `year`, `round(N)`.
    #[serde(default)]
    pub mask: Option<String>,
    /// Whether the roles may write the columns (INSERT, UPDATE SET, COPY
    /// FROM); false refuses such statements with 42501. Default true.
    #[serde(default = "yes")]
    pub write: bool,
}

fn yes() -> bool {
    true
}

/// A column pattern of `[[policies]]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    /// schema, table, column; `None` is `*`.
    parts: [Option<String>; 3],
}

impl ColumnPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self { parts: [None, None, None] });
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [s, t, c] = parts.as_slice() else {
            return Err(format!(
                "{text:?} is not schema.table.column (any part may be *, e.g. \
                 \"public.customers.*\"), or \"*\""
            ));
        };
        let part = |p: &str| (p != "*").then(|| p.to_string());
        Ok(Self { parts: [part(s), part(t), part(c)] })
    }

    /// How many parts are named, 0 to 3: a rule naming more wins.
    pub fn specificity(&self) -> u8 {
        self.parts.iter().filter(|p| p.is_some()).count() as u8
    }

    /// Whether `schema.table.column` matches.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.parts
            .iter()
            .zip([schema, table, column])
            .all(|(p, v)| p.as_deref().is_none_or(|p| p == v))
    }
}

/// A mask, parsed (DESIGN.md, Access per role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Keeps the first `prefix` and the last `suffix` characters, with `pad`
    /// between them; a value not longer than `prefix + suffix` shows `pad` only.
    Partial { prefix: usize, pad: String, suffix: usize },
    /// `j***@example.com`: the first character of the local part, the domain.
    Email,
    /// Every character but the last four replaced by `*`.
    Last4,
    /// Keyed HMAC-SHA256 of the value, hex: equal values, equal masks.
    Hash,
    /// NULL.
    Null,
    /// A fixed text.
    Redact(String),
    /// The year of a date or timestamp.
    Year,
    /// A number rounded to `N` decimal places (negative: to tens, hundreds...).
    Round(i32),
}

impl Mask {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (name, args) = match text.split_once('(') {
            Some((name, rest)) => {
                let args = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("{text:?}: the argument list is not closed with )"))?;
                (name.trim(), Some(args))
            }
            None => (text, None),
        };
        let args = args.map(arguments).transpose().map_err(|e| format!("{text:?}: {e}"))?;
        let args = args.unwrap_or_default();
        let usage = |shape: &str| format!("{text:?}: write {shape}");
        let mask = match (name, args.as_slice()) {
            ("partial", [Arg::Int(p), Arg::Text(pad), Arg::Int(s)]) if *p >= 0 && *s >= 0 => {
                Mask::Partial { prefix: *p as usize, pad: pad.clone(), suffix: *s as usize }
            }
            ("partial", _) => {
                return Err(usage("partial(prefix, 'pad', suffix), e.g. partial(0, '***-**-', 4)"))
            }
            ("email", []) => Mask::Email,
            ("last4", []) => Mask::Last4,
            ("hash", []) => Mask::Hash,
            ("null", []) => Mask::Null,
            ("redact", [Arg::Text(t)]) => Mask::Redact(t.clone()),
            ("redact", _) => return Err(usage("redact('TEXT')")),
            ("year", []) => Mask::Year,
            ("round", [Arg::Int(n)]) => Mask::Round(*n as i32),
            ("round", _) => {
                return Err(usage("round(N), N decimal places (negative for tens, hundreds, ...)"))
            }
            ("email" | "last4" | "hash" | "null" | "year", _) => {
                return Err(format!("{text:?}: {name} takes no arguments"))
            }
            _ => {
                return Err(format!(
                    "{text:?} is not a mask; use partial(prefix, 'pad', suffix), email, last4, \
                     hash, null, redact('TEXT'), year or round(N)"
                ))
            }
        };
        Ok(mask)
    }

    /// Why the mask cannot apply to a column of type `t`, if it cannot.
    pub fn unfit_for(&self, t: LogicalType) -> Option<&'static str> {
        use LogicalType as L;
        match self {
            Mask::Year if !matches!(t, L::Date | L::Timestamp | L::Timestamptz) => {
                Some("year applies to date, timestamp and timestamptz columns")
            }
            Mask::Round(_)
                if !matches!(
                    t,
                    L::Int2 | L::Int4 | L::Int8 | L::Numeric | L::Float4 | L::Float8
                ) =>
            {
                Some("round applies to numeric columns (int2, int4, int8, numeric, float4, float8)")
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Int(i64),
    Text(String),
}

/// `1, 'a''b', -2`: integers and single-quoted strings ('' is a quote).
fn arguments(text: &str) -> Result<Vec<Arg>, String> {
    let mut args = Vec::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Ok(args);
    }
    loop {
        if let Some(quoted) = rest.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '\'')) => {
                        if quoted[i + 1..].starts_with('\'') {
                            value.push('\'');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => value.push(c),
                    None => return Err("a quoted text is not closed".into()),
                }
            };
            args.push(Arg::Text(value));
            rest = quoted[end..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let number = rest[..end].trim();
            let n = number
                .parse::<i64>()
                .map_err(|_| format!("{number:?} is neither a whole number nor a 'quoted text'"))?;
            if n.unsigned_abs() > 1000 {
                return Err(format!("{n} is too large"));
            }
            args.push(Arg::Int(n));
            rest = rest[end..].trim_start();
        }
        match rest.strip_prefix(',') {
            Some(more) => rest = more.trim_start(),
            None if rest.is_empty() => return Ok(args),
            None => return Err(format!("unexpected {rest:?}")),
        }
    }
}

/// Problems with `[access]` and `[[policies]]`, each with its key path.
pub(crate) fn validate(
    access: &Access,
    policies: &[Policy],
    columns: &[Column],
    problems: &mut Vec<String>,
) {
    let all: Vec<&Column> = columns.iter().collect();
    check_mask("access", access.default, access.mask.as_deref(), &all, problems);
    for (i, p) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if p.roles.is_empty() {
            problems.push(format!("{at}.roles: name at least one role, or \"*\""));
        }
        if p.roles.iter().any(|r| r.is_empty()) {
            problems.push(format!("{at}.roles: a role name is empty"));
        }
        if p.columns.is_empty() {
            problems.push(format!("{at}.columns: name at least one column pattern"));
        }
        let mut covered = Vec::new();
        for (j, text) in p.columns.iter().enumerate() {
            match ColumnPattern::parse(text) {
                Err(e) => problems.push(format!("{at}.columns[{j}]: {e}")),
                Ok(pattern) => {
                    let matching: Vec<&Column> = columns
                        .iter()
                        .filter(|c| c.parts().is_some_and(|(s, t, n)| pattern.matches(s, t, n)))
                        .collect();
                    if matching.is_empty() {
                        problems.push(format!(
                            "{at}.columns[{j}]: {text:?} matches no registered column"
                        ));
                    }
                    covered.extend(matching);
                }
            }
        }
        check_mask(&at, p.access, p.mask.as_deref(), &covered, problems);
    }
}

/// A rule's mask: present exactly when masked, valid, fit for every column
/// it covers.
fn check_mask(
    at: &str,
    level: AccessLevel,
    mask: Option<&str>,
    covered: &[&Column],
    problems: &mut Vec<String>,
) {
    match (level, mask) {
        (AccessLevel::Masked, None) => {
            problems.push(format!("{at}.mask: access \"masked\" needs a mask, e.g. \"last4\""))
        }
        (AccessLevel::Masked, Some(text)) => match Mask::parse(text) {
            Err(e) => problems.push(format!("{at}.mask: {e}")),
            Ok(m) => {
                for c in covered {
                    if let Some(why) = m.unfit_for(c.logical_type) {
                        problems.push(format!(
                            "{at}.mask: {why}; {} is {}",
                            c.name,
                            c.logical_type.name()
                        ));
                    }
                }
            }
        },
        (_, Some(_)) => problems.push(format!(
            "{at}.mask: only access \"masked\" takes a mask, this is \"{}\"",
            level.as_str()
        )),
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_parse_with_their_arguments() {
        assert_eq!(
            Mask::parse("partial(0, '***-**-', 4)").unwrap(),
            Mask::Partial { prefix: 0, pad: "***-**-".into(), suffix: 4 }
        );
        assert_eq!(Mask::parse("redact('it''s gone')").unwrap(), Mask::Redact("it's gone".into()));
        assert_eq!(Mask::parse("round(-3)").unwrap(), Mask::Round(-3));
        assert_eq!(Mask::parse(" last4 ").unwrap(), Mask::Last4);
        for bad in [
            "partial(1, 2, 3)",
            "partial(0, 'x')",
            "lats4",
            "redact(x)",
            "round('a')",
            "email(1)",
            "redact('open",
            "partial(-1, 'x', 1)",
            "round(99999)",
            "hash(",
        ] {
            assert!(Mask::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn column_patterns_count_what_they_name() {
        let p = ColumnPattern::parse("public.customers.*").unwrap();
        assert_eq!(p.specificity(), 2);
        assert!(p.matches("public", "customers", "ssn"));
        assert!(!p.matches("public", "orders", "ssn"));
        assert_eq!(ColumnPattern::parse("*").unwrap().specificity(), 0);
        assert!(ColumnPattern::parse("customers.ssn").is_err());
    }
}
