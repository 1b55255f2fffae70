//! Which result columns are encrypted: registered `schema.table.column` →
//! (table OID, attribute number), the two numbers RowDescription carries for
//! every field that is a plain column reference. With them the read path
//! decrypts `SELECT *`, aliases, joins, subqueries and views over plain columns
//! without re-implementing Postgres' name resolution.
//!
//! Loaded on the proxy's own connection; reloaded when DDL may have moved a
//! table (a dropped and re-created table gets a new OID).

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::sql::{EncryptedColumn, Registry};

/// Registered columns by (table OID, attribute number).
#[derive(Debug, Default)]
pub struct Catalog {
    by_attribute: HashMap<(u32, i16), Arc<EncryptedColumn>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("registered columns not found in the database: {0}; create them (as bytea) or remove them from [[columns]]")]
    Missing(String),
    #[error("reading the catalog: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl Catalog {
    /// Looks every registered column up. A registered column that does not
    /// exist is an error: the proxy must not start believing it protects it.
    pub async fn load(db: &Client, registry: &Registry) -> Result<Self, CatalogError> {
        let columns: Vec<Arc<EncryptedColumn>> = registry.columns().cloned().collect();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let rows = db
            .query(
                "SELECT c.oid::int8, a.attnum, n.nspname || '.' || c.relname || '.' || a.attname \
                 FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT a.attisdropped AND a.attnum > 0 \
                 AND n.nspname || '.' || c.relname || '.' || a.attname = ANY($1)",
                &[&names],
            )
            .await?;
        let mut by_attribute = HashMap::new();
        for row in rows {
            let (oid, attnum, name): (i64, i16, String) = (row.get(0), row.get(1), row.get(2));
            let Ok(oid) = u32::try_from(oid) else { continue };
            if let Some(c) = columns.iter().find(|c| c.name == name) {
                by_attribute.insert((oid, attnum), c.clone());
            }
        }
        let missing: Vec<&str> = columns
            .iter()
            .filter(|c| !by_attribute.values().any(|f: &Arc<EncryptedColumn>| f.name == c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(CatalogError::Missing(missing.join(", ")));
        }
        Ok(Self { by_attribute })
    }

    /// The encrypted column a RowDescription field comes from, if any.
    pub fn column(&self, table_oid: u32, attnum: i16) -> Option<&Arc<EncryptedColumn>> {
        self.by_attribute.get(&(table_oid, attnum))
    }

    pub fn len(&self) -> usize {
        self.by_attribute.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_attribute.is_empty()
    }
}
