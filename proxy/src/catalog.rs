//! Which result columns are encrypted: registered `schema.table.column` →
//! (table OID, attribute number), the two numbers RowDescription carries for
//! every field that is a plain column reference. With them the read path
//! decrypts `SELECT *`, aliases, joins, subqueries and views over plain columns
//! without re-implementing Postgres' name resolution.
//!
//! Views (and materialized views) whose columns are plain references to
//! encrypted columns are found too, by preparing each view's definition and
//! reading the origin of its result columns from the RowDescription, as the
//! read path does; views over such views follow. Their columns decrypt like
//! the columns they show, and [`Catalog::views`] lets the analyser treat
//! them as encrypted.
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
    views: Vec<ViewColumn>,
}

/// A column of a view that shows an encrypted column as it is.
#[derive(Debug, Clone)]
pub struct ViewColumn {
    pub schema: String,
    pub view: String,
    pub column: String,
    /// The encrypted column it shows.
    pub source: Arc<EncryptedColumn>,
}

/// Levels of views over views followed.
const MAX_VIEW_DEPTH: usize = 8;

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
        let mut catalog = Self { by_attribute, views: Vec::new() };
        catalog.find_views(db).await?;
        Ok(catalog)
    }

    /// Adds the columns of views that show encrypted columns as they are.
    async fn find_views(&mut self, db: &Client) -> Result<(), CatalogError> {
        let mut sources: Vec<i64> =
            self.by_attribute.keys().map(|(oid, _)| i64::from(*oid)).collect();
        sources.sort_unstable();
        sources.dedup();
        for _ in 0..MAX_VIEW_DEPTH {
            let views = db
                .query(
                    "SELECT DISTINCT v.oid::int8, n.nspname::text, v.relname::text, \
                     pg_get_viewdef(v.oid) \
                     FROM pg_depend d \
                     JOIN pg_rewrite r ON r.oid = d.objid \
                     JOIN pg_class v ON v.oid = r.ev_class \
                     JOIN pg_namespace n ON n.oid = v.relnamespace \
                     WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid::int8 = ANY($1) \
                     AND v.relkind IN ('v', 'm') AND v.oid <> d.refobjid",
                    &[&sources],
                )
                .await?;
            let mut found = Vec::new();
            for view in views {
                let (oid, schema, name, definition): (i64, String, String, String) =
                    (view.get(0), view.get(1), view.get(2), view.get(3));
                let Ok(oid32) = u32::try_from(oid) else { continue };
                // A view that cannot be prepared (it needs a privilege the
                // proxy lacks, say) shows nothing decryptable.
                let Ok(statement) = db.prepare(&definition).await else {
                    tracing::warn!(view = %name, "cannot prepare the view's definition; its encrypted columns will not decrypt");
                    continue;
                };
                for (i, col) in statement.columns().iter().enumerate() {
                    let (Some(t), Some(a)) = (col.table_oid(), col.column_id()) else { continue };
                    let Some(source) = self.by_attribute.get(&(t, a)).cloned() else { continue };
                    let Ok(attnum) = i16::try_from(i + 1) else { continue };
                    if self.by_attribute.insert((oid32, attnum), source.clone()).is_none() {
                        self.views.push(ViewColumn {
                            schema: schema.clone(),
                            view: name.clone(),
                            column: col.name().to_string(),
                            source,
                        });
                        found.push(oid);
                    }
                }
            }
            found.sort_unstable();
            found.dedup();
            if found.is_empty() {
                break;
            }
            sources = found;
        }
        Ok(())
    }

    /// The view columns that show encrypted columns.
    pub fn views(&self) -> &[ViewColumn] {
        &self.views
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
