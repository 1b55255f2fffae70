//! Access per role (DESIGN.md): what each login role gets of each encrypted
//! column — the value, a mask of it, its envelope, or nothing — and whether it
//! may write it.
//!
//! The identity is the login role of the startup message, authenticated by
//! Postgres: `SET ROLE` and `SET SESSION AUTHORIZATION` change what Postgres
//! checks, never what pgwarden shows.
//!
//! # Which rule wins
//! Among the `[[policies]]` naming the role (or `"*"`) and matching the
//! column, the one whose column pattern names more parts wins
//! (`public.customers.ssn` over `public.customers.*` over `*`); then one
//! naming the role over one for `"*"`; at equal specificity the most
//! restrictive: deny, then ciphertext, then masked, then full. A role no rule
//! matches gets `[access] default`.

pub mod mask;

use std::sync::Arc;

use pgwarden_config::{AccessLevel, ColumnPattern, Config, Mask};

use crate::sql::EncryptedColumn;

/// What one role gets of one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub level: AccessLevel,
    /// Set exactly when `level` is masked.
    pub mask: Option<Arc<Mask>>,
    pub write: bool,
}

/// `[access]` and `[[policies]]`, compiled once per configuration.
#[derive(Debug)]
pub struct AccessPolicy {
    default: Grant,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    roles: Vec<String>,
    columns: Vec<ColumnPattern>,
    grant: Grant,
}

fn mask_of(level: AccessLevel, text: Option<&str>) -> Option<Arc<Mask>> {
    // Validation has made sure a masked level has a mask that parses; if not,
    // the value is redacted whole rather than shown.
    (level == AccessLevel::Masked)
        .then(|| Arc::new(text.and_then(|t| Mask::parse(t).ok()).unwrap_or(Mask::Null)))
}

impl AccessPolicy {
    /// From a validated configuration.
    pub fn new(config: &Config) -> Self {
        let default = Grant {
            level: config.access.default,
            mask: mask_of(config.access.default, config.access.mask.as_deref()),
            write: true,
        };
        let rules = config
            .policies
            .iter()
            .map(|p| Rule {
                roles: p.roles.clone(),
                columns: p.columns.iter().filter_map(|c| ColumnPattern::parse(c).ok()).collect(),
                grant: Grant {
                    level: p.access,
                    mask: mask_of(p.access, p.mask.as_deref()),
                    write: p.write,
                },
            })
            .collect();
        Self { default, rules }
    }

    /// What `role` gets of `column`.
    pub fn resolve(&self, role: &str, column: &EncryptedColumn) -> &Grant {
        let mut best: Option<((u8, u8), &Grant)> = None;
        for rule in &self.rules {
            let role_rank = if rule.roles.iter().any(|r| r == role) {
                1
            } else if rule.roles.iter().any(|r| r == "*") {
                0
            } else {
                continue;
            };
            let Some(column_rank) = rule
                .columns
                .iter()
                .filter(|p| p.matches(&column.schema, &column.table, &column.column))
                .map(ColumnPattern::specificity)
                .max()
            else {
                continue;
            };
            let rank = (column_rank, role_rank);
            best = match best {
                Some((r, g)) if r > rank || (r == rank && g.level >= rule.grant.level) => {
                    Some((r, g))
                }
                _ => Some((rank, &rule.grant)),
            };
        }
        best.map_or(&self.default, |(_, g)| g)
    }
}

/// The refusal of a statement that reads a denied column (42501).
pub fn denied_message(role: &str, column: &str) -> String {
    format!(
        "permission denied: role {role} may not read encrypted column {column} (pgwarden \
         policy); leave it out of the statement, or ask for access in [[policies]]"
    )
}

/// The refusal of a statement that writes a column the role may not write.
pub fn write_denied_message(role: &str, column: &str) -> String {
    format!(
        "permission denied: role {role} may not write encrypted column {column} (pgwarden \
         policy, write = false)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_config::Policy;

    fn column(name: &str) -> EncryptedColumn {
        let mut parts = name.split('.');
        let (s, t, c) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        EncryptedColumn {
            name: name.into(),
            schema: s.into(),
            table: t.into(),
            column: c.into(),
            mode: pgwarden_config::ColumnMode::Deterministic,
            key: "k".into(),
            logical_type: pgwarden_config::LogicalType::Text,
            aad: Vec::new(),
            id: 0,
        }
    }

    fn rule(roles: &[&str], columns: &[&str], access: AccessLevel, write: bool) -> Policy {
        let mask = (access == AccessLevel::Masked).then(|| "last4".to_string());
        Policy {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            access,
            mask,
            write,
        }
    }

    fn policy(policies: Vec<Policy>) -> AccessPolicy {
        AccessPolicy::new(&Config { policies, ..Config::default() })
    }

    #[test]
    fn the_most_specific_rule_wins_and_ties_go_to_the_most_restrictive() {
        use AccessLevel::*;
        let p = policy(vec![
            rule(&["*"], &["public.customers.*"], Full, true),
            rule(&["support"], &["public.customers.ssn"], Masked, true),
            rule(&["support", "app"], &["public.customers.ssn"], Deny, true),
            rule(&["app"], &["public.customers.ssn"], Full, false),
        ]);
        let ssn = column("public.customers.ssn");
        let email = column("public.customers.email");
        let other = column("public.orders.card");
        // Two rules name support and ssn exactly: deny beats masked.
        assert_eq!(p.resolve("support", &ssn).level, AccessLevel::Deny);
        assert_eq!(p.resolve("app", &ssn).level, AccessLevel::Deny);
        assert_eq!(p.resolve("support", &email).level, AccessLevel::Full);
        assert_eq!(p.resolve("nobody", &ssn).level, AccessLevel::Full);
        assert_eq!(p.resolve("nobody", &other).level, AccessLevel::Deny);
    }

    #[test]
    fn a_rule_naming_the_role_beats_one_for_every_role_on_the_same_columns() {
        let p = policy(vec![
            rule(&["*"], &["public.customers.ssn"], AccessLevel::Deny, true),
            rule(&["etl"], &["public.customers.ssn"], AccessLevel::Ciphertext, false),
        ]);
        let ssn = column("public.customers.ssn");
        let g = p.resolve("etl", &ssn);
        assert_eq!(g.level, AccessLevel::Ciphertext);
        assert!(!g.write);
        assert_eq!(p.resolve("app", &ssn).level, AccessLevel::Deny);
        // No rule and the default default: deny.
        assert_eq!(p.resolve("app", &column("public.customers.email")).level, AccessLevel::Deny);
    }
}
