//! The key and column registry in the upstream database (schema `pgwarden`,
//! modelled on the seed's `encryption_keys` and `encrypted_columns`), and the
//! `pgwarden keys init|list` commands that manage it.
//!
//! Every proxy replica reads the same wrapped data keys from here, so replicas
//! share keys without sharing files; only the master key is configured per
//! replica.

use pgwarden_config::{ColumnMode, Config};
use tokio_postgres::Client;

use crate::crypto::{DataKey, KeyRow, KeyStatus, Keyring, MasterKey};

/// The schema, idempotent.
pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS pgwarden;
CREATE TABLE IF NOT EXISTS pgwarden.encryption_keys (
    key_id                 serial PRIMARY KEY,
    key_name               text NOT NULL,
    key_version            integer NOT NULL CHECK (key_version > 0),
    key_status             text NOT NULL DEFAULT 'ACTIVE'
                           CHECK (key_status IN ('ACTIVE', 'ROTATING', 'DEPRECATED', 'REVOKED')),
    algorithm              text NOT NULL DEFAULT 'AES-256-GCM / AES-256-GCM-SIV',
    created_at             timestamptz NOT NULL DEFAULT now(),
    rotation_schedule_days integer,
    next_rotation_at       timestamptz,
    fingerprint            text NOT NULL,
    wrapped_key            bytea NOT NULL,
    UNIQUE (key_name, key_version)
);
CREATE TABLE IF NOT EXISTS pgwarden.encrypted_columns (
    column_name    text PRIMARY KEY,
    schema_name    text NOT NULL,
    table_name     text NOT NULL,
    attribute_name text NOT NULL,
    logical_type   text NOT NULL,
    mode           text NOT NULL CHECK (mode IN ('deterministic', 'randomized')),
    key_name       text NOT NULL,
    classification text NOT NULL,
    compliance     text[] NOT NULL DEFAULT '{}',
    registered_at  timestamptz NOT NULL DEFAULT now()
);
";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot connect to Postgres as upstream.admin_user: {0}")]
    Connect(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Column(String),
}

/// Opens the proxy's own connection (`upstream.admin_*`).
pub async fn connect_admin(config: &Config) -> Result<Client, KeysError> {
    let up = &config.upstream;
    if up.admin_user.is_empty() {
        return Err(KeysError::Config("upstream.admin_user is not set".into()));
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host(&up.host)
        .port(up.port)
        .user(&up.admin_user)
        .dbname(&up.admin_database)
        .application_name("pgwarden")
        .connect_timeout(up.connect_timeout.get());
    if let Some(secret) = &up.admin_password {
        let pw = secret.resolve().map_err(KeysError::Config)?;
        pg.password(pw.expose());
    }
    // The same upstream.tls as sessions, with the same rustls configuration.
    let tls = crate::upstream::tls::setup(up).map_err(KeysError::Config)?;
    let connect_err = |e: tokio_postgres::Error| KeysError::Connect(e.to_string());
    let client = match tls {
        None => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await.map_err(connect_err)?;
            tokio::spawn(drive(conn));
            client
        }
        Some(setup) => {
            pg.ssl_mode(crate::upstream::tls::postgres_ssl_mode(setup.mode));
            let tls = crate::upstream::tls::PostgresTls(setup);
            let (client, conn) = pg.connect(tls).await.map_err(connect_err)?;
            tokio::spawn(drive(conn));
            client
        }
    };
    Ok(client)
}

/// Runs the admin connection until it closes.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::warn!(error = %e, "admin connection closed");
    }
}

fn master_key(config: &Config) -> Result<MasterKey, KeysError> {
    let secret = config
        .keys
        .master_key
        .as_ref()
        .ok_or_else(|| KeysError::Config("keys.master_key is not set".into()))?;
    Ok(MasterKey::load(secret)?)
}

/// Every row of `pgwarden.encryption_keys`.
pub async fn key_rows(db: &Client) -> Result<Vec<KeyRow>, KeysError> {
    let rows = db
        .query(
            "SELECT key_id, key_name, key_version, key_status, wrapped_key, fingerprint \
             FROM pgwarden.encryption_keys ORDER BY key_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: i32 = r.get(0);
            let version: i32 = r.get(2);
            let status: String = r.get(3);
            Ok(KeyRow {
                id: u32::try_from(id).map_err(|_| KeysError::Column(format!("bad key id {id}")))?,
                name: r.get(1),
                version: u32::try_from(version)
                    .map_err(|_| KeysError::Column(format!("bad key version {version}")))?,
                status: status.parse()?,
                wrapped: r.get(4),
                fingerprint: Some(r.get(5)),
            })
        })
        .collect()
}

/// Loads the keyring the proxy runs with.
pub async fn load_keyring(config: &Config, db: &Client) -> Result<Keyring, KeysError> {
    let master = master_key(config)?;
    Ok(Keyring::load(&master, key_rows(db).await?)?)
}

/// What `keys init` did, for its report.
#[derive(Debug, Default)]
pub struct InitReport {
    pub keys_created: Vec<String>,
    pub columns_registered: usize,
    pub guards_installed: Vec<String>,
}

/// `pgwarden keys init`: creates the schema, a data key for every key name the
/// columns use that has none, registers the columns and installs the CHECK
/// guard on each. Idempotent. Fails before writing anything if the master key
/// does not open the keys already there.
pub async fn init(config: &Config, db: &mut Client) -> Result<InitReport, KeysError> {
    let master = master_key(config)?;
    db.batch_execute(SCHEMA_SQL).await?;
    // A wrong master key must stop here, not create keys nobody can read.
    let existing = key_rows(db).await?;
    Keyring::load(&master, existing.clone())?;

    let tx = db.transaction().await?;
    let mut report = InitReport::default();
    let mut names: Vec<&str> = config.columns.iter().map(|c| c.key.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if existing.iter().any(|k| k.name == name) {
            continue;
        }
        let key = DataKey::generate();
        let wrapped = key.wrap(&master, name, 1)?;
        tx.execute(
            "INSERT INTO pgwarden.encryption_keys \
             (key_name, key_version, key_status, fingerprint, wrapped_key) VALUES ($1, 1, $2, $3, $4)",
            &[&name, &KeyStatus::Active.as_str(), &key.fingerprint(), &wrapped],
        )
        .await?;
        report.keys_created.push(name.to_string());
    }
    for c in &config.columns {
        let Some((schema, table, column)) = c.parts() else { continue };
        let ty: Option<String> = tx
            .query_opt(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 JOIN pg_class t ON t.oid = a.attrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE n.nspname = $1 AND t.relname = $2 AND a.attname = $3 AND NOT a.attisdropped",
                &[&schema, &table, &column],
            )
            .await?
            .map(|r| r.get(0));
        match ty.as_deref() {
            Some("bytea") => {}
            Some(other) => {
                return Err(KeysError::Column(format!(
                    "column {} is {other}; an encrypted column must be bytea (create it as bytea; \
                     migrating existing plaintext in place is not available yet)",
                    c.name
                )))
            }
            None => return Err(KeysError::Column(format!("column {} does not exist", c.name))),
        }
        let mode = match c.mode {
            ColumnMode::Deterministic => "deterministic",
            ColumnMode::Randomized => "randomized",
        };
        let logical = c.logical_type.name();
        let classification = format!("{:?}", c.classification).to_lowercase();
        tx.execute(
            "INSERT INTO pgwarden.encrypted_columns (column_name, schema_name, table_name, \
             attribute_name, logical_type, mode, key_name, classification, compliance) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (column_name) DO UPDATE SET logical_type = EXCLUDED.logical_type, \
             mode = EXCLUDED.mode, key_name = EXCLUDED.key_name, \
             classification = EXCLUDED.classification, compliance = EXCLUDED.compliance",
            &[
                &c.name,
                &schema,
                &table,
                &column,
                &logical,
                &mode,
                &c.key,
                &classification,
                &c.compliance,
            ],
        )
        .await?;
        report.columns_registered += 1;
        let constraint = guard_name(table, column);
        let present: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE n.nspname = $1 AND t.relname = $2 AND k.conname = $3)",
                &[&schema, &table, &constraint],
            )
            .await?
            .get(0);
        if !present {
            tx.batch_execute(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({col} IS NULL OR \
                 substring({col} from 1 for 2) = '\\x5057'::bytea)",
                quote_qualified(schema, table),
                quote_ident(&constraint),
                col = quote_ident(column),
            ))
            .await?;
            report.guards_installed.push(c.name.clone());
        }
    }
    tx.commit().await?;
    Ok(report)
}

/// The CHECK constraint's name for a column.
pub fn guard_name(table: &str, column: &str) -> String {
    let mut name = format!("pgwarden_envelope_{table}_{column}");
    name.truncate(63);
    name
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// `pgwarden keys list`: one line per key version, never key bytes.
pub async fn list(db: &Client) -> Result<String, KeysError> {
    let rows = db
        .query(
            "SELECT key_id, key_name, key_version, key_status, fingerprint, \
             to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
             FROM pgwarden.encryption_keys ORDER BY key_name, key_version",
            &[],
        )
        .await?;
    let mut out = format!(
        "{:>4}  {:<16} {:>7}  {:<10} {:<18} {}\n",
        "id", "name", "version", "status", "fingerprint", "created (UTC)"
    );
    for r in rows {
        let (id, name, version, status, fp, created): (i32, String, i32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        out.push_str(&format!(
            "{id:>4}  {name:<16} {version:>7}  {status:<10} {fp:<18} {created}\n"
        ));
    }
    Ok(out)
}
