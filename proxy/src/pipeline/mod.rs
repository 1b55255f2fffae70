//! The encryption pipeline of a session (DESIGN.md, "The statement pipeline"):
//! statements are analysed and their literals and parameters encrypted on the
//! way to Postgres; results are decrypted on the way back.
//!
//! It runs only when columns are registered and the session uses the database
//! they live in (`upstream.admin_database`); every other session keeps the
//! zero-copy pass-through path.
//!
//! The two loops of a session see two streams that answer each other in order:
//! each frontend message that Postgres answers leaves a [`Pending`] entry in a
//! queue, and the backend side takes them off as the answers arrive. That is
//! how a DataRow is matched with the portal it belongs to (Execute sends no
//! RowDescription), and how the messages the proxy adds are told from the
//! client's:
//! - a Describe of every parsed statement, so that the result columns of each
//!   prepared statement are known (its answers are swallowed);
//! - in place of a refused message, a `DO` block that raises the refusal, so
//!   that the client gets an ErrorResponse with pgwarden's SQLSTATE exactly
//!   where Postgres would have put its own, and the transaction is aborted as
//!   with any other error.
//!
//! # Layout
//! - this file: [`Encryption`], the state all sessions share, and [`Pending`];
//! - [`frontend`]: Query, Parse and Bind on their way to Postgres;
//! - [`backend`]: ParameterDescription, RowDescription and DataRow on their
//!   way to the client.

pub mod backend;
pub mod copy;
pub mod frontend;

pub use backend::Backend;
pub use frontend::Frontend;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use pgwarden_config::Config;
use tokio_postgres::Client;

use crate::access::AccessPolicy;
use crate::catalog::Catalog;
use crate::crypto::Keyring;
use crate::keys::{self, KeysError};
use crate::protocol::messages::ResultFormats;
use crate::sql::{CopySpec, EncryptedColumn, Registry};

/// Frontend messages awaiting their answer, most a client may pipeline: a
/// client past it is sending without reading.
pub const MAX_PENDING: usize = 1_000_000;

/// What every session of a proxy with registered columns shares.
pub struct Encryption {
    /// The registered columns, as configured.
    configured: Registry,
    /// The same plus the views that show them, as the analyser sees them.
    pub registry: ArcSwap<Registry>,
    pub keyring: ArcSwap<Keyring>,
    pub catalog: ArcSwap<Catalog>,
    /// What each role gets of each column; swapped on reload, read at every
    /// statement, so that a new policy applies from the next one.
    pub access: ArcSwap<AccessPolicy>,
    /// The registered columns' counters; set by the proxy once its metrics
    /// exist (none until then).
    pub metrics: crate::metrics::ColumnMetrics,
    /// The database the registered columns live in.
    pub database: String,
    /// The proxy's own connection, for reloading the catalog and the keys.
    db: Client,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("database", &self.database)
            .field("keyring", &self.keyring.load())
            .field("catalog", &self.catalog.load().len())
            .finish_non_exhaustive()
    }
}

impl Encryption {
    /// Connects as `upstream.admin_user`, loads the keys (a wrong master key
    /// fails here) and finds every registered column. `None` when no columns
    /// are registered.
    pub async fn load(config: &Config) -> Result<Option<Self>, KeysError> {
        if config.columns.is_empty() {
            return Ok(None);
        }
        let db = keys::connect_admin(config).await?;
        let keyring = keys::load_keyring(config, &db).await.map_err(|e| match e {
            KeysError::Db(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
            {
                KeysError::Config(format!(
                    "database {} has no key registry (schema pgwarden); run `pgwarden keys init \
                     --config FILE` first",
                    config.upstream.admin_database
                ))
            }
            e => e,
        })?;
        let registry = Registry::new(&config.columns);
        for c in registry.columns() {
            keyring.active(&c.key).map_err(|e| {
                KeysError::Config(format!(
                    "column {}: {e}; run `pgwarden keys init --config FILE` first",
                    c.name
                ))
            })?;
        }
        let catalog = Catalog::load(&db, &registry)
            .await
            .map_err(|e| KeysError::Config(format!("cannot find the registered columns: {e}")))?;
        Ok(Some(Self {
            registry: ArcSwap::from_pointee(registry.with_views(catalog.views())),
            configured: registry,
            keyring: ArcSwap::from_pointee(keyring),
            catalog: ArcSwap::from_pointee(catalog),
            access: ArcSwap::from_pointee(AccessPolicy::new(config)),
            metrics: crate::metrics::ColumnMetrics::default(),
            database: config.upstream.admin_database.clone(),
            db,
        }))
    }

    /// Finds the registered columns again, after DDL may have moved them. On
    /// failure the old catalog stays (a dropped table has no rows to decrypt).
    pub async fn refresh_catalog(&self) {
        match Catalog::load(&self.db, &self.configured).await {
            Ok(c) => {
                self.registry.store(Arc::new(self.configured.with_views(c.views())));
                self.catalog.store(Arc::new(c));
            }
            Err(e) => tracing::warn!(error = %e, "catalog refresh failed; keeping the old one"),
        }
    }

    /// Reads the data keys (new versions, status changes) and the catalog
    /// again.
    pub async fn reload_keys(&self, config: &Config) -> Result<(), KeysError> {
        let keyring = keys::load_keyring(config, &self.db).await?;
        self.keyring.store(Arc::new(keyring));
        self.refresh_catalog().await;
        Ok(())
    }
}

/// A frontend message sent to Postgres whose answer the backend side must
/// recognise, in the order sent.
#[derive(Debug)]
pub enum Pending {
    /// Query or FunctionCall: everything up to ReadyForQuery.
    Simple,
    /// Parse: ParseComplete. `injected`: the proxy's own, answer swallowed.
    Parse { injected: bool },
    /// Bind: BindComplete, upon which the portal's plan is fixed.
    Bind { portal: Bytes, statement: Bytes, formats: ResultFormats, injected: bool },
    /// Describe of a statement: ParameterDescription, then RowDescription or
    /// NoData. `params`: the parameters bound for encrypted columns.
    /// `copy_out`: the proxy's Describe after a Parse of a COPY TO STDOUT of
    /// encrypted columns (whose source was described just before); after any
    /// other Parse, what was learnt of a COPY by that name is forgotten.
    DescribeStatement { name: Bytes, params: Arc<[BoundParam]>, injected: bool, copy_out: bool },
    /// Describe of a portal: RowDescription or NoData.
    DescribePortal,
    /// Execute: DataRows, then CommandComplete, PortalSuspended,
    /// EmptyQueryResponse or an error.
    Execute { portal: Bytes },
    /// Close: CloseComplete.
    Close { statement: Option<Bytes> },
    /// Sync: ReadyForQuery.
    Sync,
    /// The Parse of a COPY TO STDOUT's source, swallowed.
    CopyParse,
    /// The Describe of a COPY TO STDOUT's source: its RowDescription tells
    /// which fields of the rows to decrypt; swallowed. `statement`: the
    /// prepared COPY it is for (extended protocol), `None` for the simple
    /// Query that follows.
    CopyDescribe { spec: Arc<CopySpec>, statement: Option<Bytes> },
    /// The Close of the statement an extended-protocol COPY's source was
    /// described with: CloseComplete, swallowed.
    CopyClose,
    /// The proxy's own Sync: its ReadyForQuery is swallowed.
    InjectedSync,
    /// The proxy's own failing Query, sent to abort a transaction in which
    /// the client was given an error Postgres did not see: its
    /// ErrorResponse and ReadyForQuery are swallowed.
    InjectedAbort,
}

/// A parameter of a prepared statement bound for an encrypted column.
#[derive(Debug, Clone)]
pub struct BoundParam {
    /// Zero-based.
    pub index: usize,
    pub column: Arc<EncryptedColumn>,
    /// The type OID the client declared in Parse (0: none). Binary values
    /// come in its format, and ParameterDescription reports it back.
    pub declared_oid: u32,
}

impl BoundParam {
    /// The type ParameterDescription reports: the declared one, else the
    /// column's logical type.
    pub fn reported_oid(&self) -> u32 {
        if self.declared_oid != 0 {
            self.declared_oid
        } else {
            self.column.logical_type.oid()
        }
    }
}

/// The queue between a session's two loops.
#[derive(Debug, Default)]
pub struct Queue {
    pending: Mutex<VecDeque<Pending>>,
    /// The error the client gets in place of the next ErrorResponse (which
    /// answers a CopyFail the proxy sent): SQLSTATE and message.
    replacement: Mutex<Option<(&'static str, String)>>,
    /// The client was told its transaction failed; Postgres must be made to
    /// agree before the client's next statement.
    abort: std::sync::atomic::AtomicBool,
}

impl Queue {
    pub fn replace_next_error(&self, sqlstate: &'static str, message: String) {
        *self.replacement.lock().unwrap_or_else(|p| p.into_inner()) = Some((sqlstate, message));
    }

    pub fn request_abort(&self) {
        self.abort.store(true, std::sync::atomic::Ordering::Release);
    }

    /// A plain load first: this runs for every message of the pipeline.
    fn take_abort(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.abort.load(Ordering::Acquire) && self.abort.swap(false, Ordering::AcqRel)
    }

    fn take_replacement(&self) -> Option<(&'static str, String)> {
        self.replacement.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Adds `p`; false when the client has more than [`MAX_PENDING`] messages
    /// unanswered.
    pub fn push(&self, p: Pending) -> bool {
        let mut q = self.lock();
        if q.len() >= MAX_PENDING {
            return false;
        }
        q.push_back(p);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An SQL statement that fails with `sqlstate` and `message` when run, so
/// that a refusal reaches the client from Postgres in the place of the
/// refused statement. The message is pgwarden's own text (column names and
/// reasons, never values).
pub fn raise(sqlstate: &str, message: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "''").replace('$', "\\044");
    format!(
        "DO $pgwarden$BEGIN RAISE EXCEPTION USING ERRCODE = E'{}', MESSAGE = E'{}'; END$pgwarden$",
        quote(sqlstate),
        quote(message)
    )
}
