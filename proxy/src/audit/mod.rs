//! The audit log (DESIGN.md, "Audit record"): a record for every connection,
//! login, statement, denial and reload, chained by HMAC and written to the
//! configured sinks.
//!
//! Sessions build [`Record`]s from parts they already hold (shared
//! [`SessionInfo`], the [`Statement`] text normalised once per Query or
//! Parse) and put them on a bounded queue; one writer thread formats, chains
//! and writes them. With `[audit] sinks = []` (the default) no [`Auditor`]
//! exists and sessions do no audit work.
//!
//! # Layout
//! - [`record`]: the record and its JSON line;
//! - [`redact`]: statement normalisation, literal redaction, fingerprints;
//! - [`chain`]: the HMAC chain and `pgwarden audit verify`;
//! - [`writer`]: the writer thread, the file and stdout sinks;
//! - [`postgres`]: the `pgwarden.audit_log` sink;
//! - [`track`]: a session's statements, from request to answer.

pub mod chain;
pub mod postgres;
pub mod record;
pub mod redact;
pub mod track;
pub mod writer;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pgwarden_config::{AuditSink, Config, Overflow};
use tokio::sync::{mpsc, oneshot};

pub use record::{Event, Record, SessionInfo, Statement};
use writer::{Entry, FileSink, Writer};

use crate::metrics::Metrics;

/// Records the postgres sink's channel holds (in batches) before the writer waits.
const PG_QUEUE: usize = 64;

/// How long shutdown waits for the sinks to take the last records.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The sessions' end of the audit log.
pub struct Auditor {
    tx: mpsc::Sender<Entry>,
    overflow: Overflow,
    /// `exclude_fingerprints`, swapped on reload.
    exclude: ArcSwap<HashSet<String>>,
    depth: prometheus::IntGauge,
    dropped: prometheus::IntCounter,
    /// Unix second of the last "records dropped" warning, to log once a second.
    warned_at: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Each sink's "writes are failing" flag, by name, for `/readyz`.
    health: Vec<(&'static str, Arc<std::sync::atomic::AtomicBool>)>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").field("overflow", &self.overflow).finish_non_exhaustive()
    }
}

impl Auditor {
    /// Starts the writer and its sinks; `None` when the audit log is off.
    /// The file sink continues the chain of the file it finds.
    pub async fn start(config: &Config, metrics: &Metrics) -> Result<Option<Arc<Self>>, String> {
        let audit = &config.audit;
        if !audit.enabled() {
            return Ok(None);
        }
        let key = audit
            .key
            .as_ref()
            .ok_or("audit.key is required")?
            .resolve()
            .map_err(|e| format!("audit.key: {e}"))?;
        let file = audit.sinks.contains(&AuditSink::File).then(|| {
            FileSink::new(
                PathBuf::from(&audit.file),
                audit.rotate_bytes,
                audit.fsync_interval.get(),
            )
        });
        let mut start = (0, chain::GENESIS.to_string());
        if let Some(f) = &file {
            if let Some(tail) = chain::tail(&f.path).map_err(|e| format!("audit.file: {e}"))? {
                start = tail;
            }
        }
        let mut health = Vec::new();
        if let Some(f) = &file {
            health.push(("file", f.health.clone()));
        }
        let postgres = if audit.sinks.contains(&AuditSink::Postgres) {
            let sink = postgres::PgSink::connect(config, metrics.audit_events(2)).await?;
            health.push(("postgres", sink.health.clone()));
            if file.is_none() {
                if let Some(tail) = sink.tail().await? {
                    start = tail;
                }
            }
            let (tx, rx) = mpsc::channel(PG_QUEUE);
            tokio::spawn(sink.run(rx));
            Some(tx)
        } else {
            None
        };
        let chain = chain::Chain::new(key.expose().as_bytes(), start.0, start.1)?;
        let (tx, rx) = mpsc::channel(audit.queue_capacity.max(1));
        let writer = Writer {
            chain,
            file,
            stdout: audit.sinks.contains(&AuditSink::Stdout),
            postgres,
            depth: metrics.audit_queue_depth(),
            events: [metrics.audit_events(0), metrics.audit_events(1)],
            batch: audit.queue_capacity,
        };
        let thread = std::thread::Builder::new()
            .name("pgwarden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Some(Arc::new(Self {
            tx,
            overflow: audit.on_overflow,
            exclude: ArcSwap::from_pointee(audit.exclude_fingerprints.iter().cloned().collect()),
            depth: metrics.audit_queue_depth(),
            dropped: metrics.audit_dropped(),
            warned_at: AtomicU64::new(0),
            writer: Mutex::new(Some(thread)),
            health,
        })))
    }

    /// The first sink whose writes are failing now (its records wait in
    /// the queue), if any.
    pub fn failing_sink(&self) -> Option<&'static str> {
        self.health.iter().find(|(_, f)| f.load(Ordering::Relaxed)).map(|(name, _)| *name)
    }

    /// Whether statements with this fingerprint are not audited.
    pub fn excluded(&self, fingerprint: &str) -> bool {
        let set = self.exclude.load();
        !set.is_empty() && set.contains(fingerprint)
    }

    /// Applies a reloaded `exclude_fingerprints`.
    pub fn reload(&self, config: &Config) {
        self.exclude.store(Arc::new(config.audit.exclude_fingerprints.iter().cloned().collect()));
    }

    /// Queues `r`: waits for room with `on_overflow = "block"`, drops and
    /// counts it with `"drop"`. Cancel safe (a record not queued is lost,
    /// which only a session's end causes).
    pub async fn record(&self, r: Record) {
        if r.fingerprint().is_some_and(|f| self.excluded(f)) {
            return;
        }
        let entry = Entry::Record(r);
        let sent = match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(entry)) => match self.overflow {
                Overflow::Block => self.tx.send(entry).await.is_ok(),
                Overflow::Drop => {
                    self.drop_one();
                    return;
                }
            },
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if sent {
            self.depth.inc();
        } else {
            self.drop_one();
        }
    }

    /// Queues `records` in order, as [`Auditor::record`] queues each. Cancel
    /// safe: a record leaves `records` only once it is queued (or dropped, by
    /// `on_overflow = "drop"`), so what a cancelled call leaves behind is
    /// still there for the session's end to queue.
    pub async fn queue_all(&self, records: &mut VecDeque<Record>) {
        while let Some(r) = records.front() {
            if r.fingerprint().is_some_and(|f| self.excluded(f)) {
                records.pop_front();
                continue;
            }
            let permit = match self.tx.try_reserve() {
                Ok(permit) => Some(permit),
                Err(mpsc::error::TrySendError::Full(())) if self.overflow == Overflow::Block => {
                    self.tx.reserve().await.ok()
                }
                Err(_) => None,
            };
            let Some(r) = records.pop_front() else { break };
            match permit {
                Some(permit) => {
                    permit.send(Entry::Record(r));
                    self.depth.inc();
                }
                None => self.drop_one(),
            }
        }
    }

    /// Queues `r` from code that cannot wait (a reload), in order with the
    /// records queued before it: if the queue is full, a task waits for room
    /// in its place with `on_overflow = "block"`; it is dropped with `"drop"`.
    pub fn record_detached(self: &Arc<Self>, r: Record) {
        match self.tx.try_send(Entry::Record(r)) {
            Ok(()) => self.depth.inc(),
            Err(mpsc::error::TrySendError::Full(entry)) if self.overflow == Overflow::Block => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return self.drop_one();
                };
                let me = self.clone();
                rt.spawn(async move {
                    if me.tx.send(entry).await.is_ok() {
                        me.depth.inc();
                    } else {
                        me.drop_one();
                    }
                });
            }
            Err(_) => self.drop_one(),
        }
    }

    fn drop_one(&self) {
        self.dropped.inc();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.warned_at.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                dropped_total = self.dropped.get(),
                "audit queue full: records dropped (audit.on_overflow = \"drop\")"
            );
        }
    }

    /// Waits until every record queued so far is written to the file and
    /// stdout sinks.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Entry::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes the shutdown seal after every record queued so far, and waits
    /// (up to a limit) until all sinks hold them. Later records are lost.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Entry::Close(tx)).await.is_err() {
            return;
        }
        match tokio::time::timeout(CLOSE_TIMEOUT, rx).await {
            Ok(Ok((seq, mac))) => {
                tracing::info!(seq, mac = %mac, "audit log sealed");
                let thread = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(t) = thread {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
            }
            _ => tracing::error!(
                queued = self.depth.get(),
                "audit sinks did not take the last records in time; they are lost"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
