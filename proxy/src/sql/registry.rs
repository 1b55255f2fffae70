//! The encrypted-column registry as the analyser sees it: which tables have
//! encrypted columns, and how each column is encrypted.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use pgwarden_config::{Column, ColumnMode, LogicalType};

/// One registered column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedColumn {
    /// `schema.table.column`.
    pub name: String,
    pub schema: String,
    pub table: String,
    pub column: String,
    pub mode: ColumnMode,
    pub key: String,
    pub logical_type: LogicalType,
    /// The AAD its envelopes are bound to ([`crate::crypto::envelope::column_aad`]).
    pub aad: Vec<u8>,
    /// Its position among the configured columns: where its metrics are.
    pub id: usize,
}

impl EncryptedColumn {
    pub fn deterministic(&self) -> bool {
        self.mode == ColumnMode::Deterministic
    }

    /// `deterministic` or `randomized`, for messages.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            ColumnMode::Deterministic => "deterministic",
            ColumnMode::Randomized => "randomized",
        }
    }
}

/// Registered tables and columns, built once per configuration.
#[derive(Debug, Default)]
pub struct Registry {
    /// (schema, table) → column name → column.
    tables: HashMap<(String, String), HashMap<String, Arc<EncryptedColumn>>>,
    /// Finds statements that may name a registered table, case-insensitively,
    /// so that others skip the parser entirely.
    prefilter: Option<AhoCorasick>,
    /// Table name → `schema.table` of a registered table outside `public`.
    elsewhere: HashMap<String, String>,
}

impl Registry {
    pub fn new(columns: &[Column]) -> Self {
        let mut tables: HashMap<(String, String), HashMap<String, Arc<EncryptedColumn>>> =
            HashMap::new();
        for (id, c) in columns.iter().enumerate() {
            let Some((schema, table, column)) = c.parts() else { continue };
            let col = Arc::new(EncryptedColumn {
                name: c.name.clone(),
                schema: schema.into(),
                table: table.into(),
                column: column.into(),
                mode: c.mode,
                key: c.key.clone(),
                logical_type: c.logical_type,
                aad: crate::crypto::envelope::column_aad(schema, table, column),
                id,
            });
            tables.entry((schema.into(), table.into())).or_default().insert(column.into(), col);
        }
        Self::from_tables(tables)
    }

    /// This registry plus views whose columns show encrypted columns as they
    /// are: a view column is analysed as the column it shows.
    pub fn with_views(&self, views: &[crate::catalog::ViewColumn]) -> Self {
        let mut tables = self.tables.clone();
        for v in views {
            tables
                .entry((v.schema.clone(), v.view.clone()))
                .or_default()
                .insert(v.column.clone(), v.source.clone());
        }
        Self::from_tables(tables)
    }

    fn from_tables(
        tables: HashMap<(String, String), HashMap<String, Arc<EncryptedColumn>>>,
    ) -> Self {
        let names: Vec<&str> = tables.keys().map(|(_, t)| t.as_str()).collect();
        let prefilter = (!names.is_empty())
            .then(|| AhoCorasick::builder().ascii_case_insensitive(true).build(&names).ok())
            .flatten();
        let mut elsewhere: HashMap<String, String> = HashMap::new();
        for (schema, table) in tables.keys().filter(|(schema, _)| schema != "public") {
            elsewhere.entry(table.clone()).or_insert_with(|| format!("{schema}.{table}"));
        }
        Self { tables, prefilter, elsewhere }
    }

    /// For a table named without its schema: a registered table of that name
    /// in a schema other than `public`, which a session's `search_path` could
    /// make the name mean.
    pub fn elsewhere(&self, table: &str) -> Option<&str> {
        self.elsewhere.get(table).map(String::as_str)
    }

    /// Whether `sql` may name a registered table. False means it cannot touch
    /// an encrypted column and needs no analysis.
    pub fn may_touch(&self, sql: &str) -> bool {
        match &self.prefilter {
            Some(ac) => ac.is_match(sql),
            None => false,
        }
    }

    /// The columns of a registered table, `schema` defaulting to `public`.
    pub fn table(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Option<&HashMap<String, Arc<EncryptedColumn>>> {
        self.tables.get(&(schema.unwrap_or("public").to_string(), table.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Every registered column.
    pub fn columns(&self) -> impl Iterator<Item = &Arc<EncryptedColumn>> {
        self.tables.values().flat_map(|t| t.values())
    }
}
