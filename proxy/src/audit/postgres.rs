//! The postgres sink: table `pgwarden.audit_log` in `upstream.admin_database`,
//! partitioned by month (the current month and `partitions_ahead` more are
//! created at start and again every day, plus a default partition so that a
//! record never fails for want of one), written in batches (one INSERT per
//! batch the writer hands over) on the proxy's own connection, which does
//! not pass through the proxy and so is never audited itself.
//!
//! Each row keeps the record's exact line (`line`), so the chain can be
//! checked from the table: `psql -Atc "SELECT line FROM pgwarden.audit_log
//! ORDER BY seq" > log.jsonl && pgwarden audit verify --open log.jsonl`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_config::Config;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::writer::PgBatch;

const SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS pgwarden;
CREATE TABLE IF NOT EXISTS pgwarden.audit_log (
    ts timestamptz NOT NULL,
    seq bigint NOT NULL,
    event text NOT NULL,
    category text NOT NULL,
    severity text NOT NULL,
    session text,
    user_name text,
    database_name text,
    client_addr text,
    statement text,
    fingerprint text,
    outcome text,
    sqlstate text,
    record jsonb NOT NULL,
    line text NOT NULL
) PARTITION BY RANGE (ts);
CREATE TABLE IF NOT EXISTS pgwarden.audit_log_default PARTITION OF pgwarden.audit_log DEFAULT;";

const INSERT: &str = "INSERT INTO pgwarden.audit_log (ts, seq, event, category, severity, \
    session, user_name, database_name, client_addr, statement, fingerprint, outcome, sqlstate, \
    record, line)
SELECT (r->>'ts')::timestamptz, (r->>'seq')::bigint, r->>'event', r->>'category', \
    r->>'severity', r->>'session', r->>'user', r->>'database', r->>'client_addr', \
    r->>'statement', r->>'fingerprint', r->>'outcome', r->>'sqlstate', r, l
FROM unnest($1::text[]) AS l, LATERAL (SELECT l::jsonb AS r) AS j";

/// How often the partitions ahead are made again.
const PARTITION_EVERY: Duration = Duration::from_secs(24 * 3600);

pub struct PgSink {
    config: Config,
    client: Option<Client>,
    events: IntCounter,
    partitioned_at: Option<Instant>,
    failing: bool,
    /// Set while writes fail, for `/readyz`.
    pub health: Arc<AtomicBool>,
}

impl PgSink {
    /// Connects and creates the table and its partitions. Fails closed: a
    /// proxy configured to audit to Postgres does not start without it.
    pub async fn connect(config: &Config, events: IntCounter) -> Result<Self, String> {
        let mut sink = Self {
            config: config.clone(),
            client: None,
            events,
            partitioned_at: None,
            failing: false,
            health: Arc::default(),
        };
        sink.ensure().await.map_err(|e| format!("audit postgres sink: {e}"))?;
        Ok(sink)
    }

    async fn ensure(&mut self) -> Result<&Client, String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client =
                crate::keys::connect_admin(&self.config).await.map_err(|e| e.to_string())?;
            client.batch_execute(SCHEMA).await.map_err(|e| e.to_string())?;
            self.client = Some(client);
            self.partitioned_at = None;
        }
        let client = self.client.as_ref().ok_or("not connected")?;
        if self.partitioned_at.is_none_or(|t| t.elapsed() > PARTITION_EVERY) {
            let ahead = self.config.audit.partitions_ahead;
            let sql = format!(
                "DO $pgw$ DECLARE m date; BEGIN
                 FOR i IN 0..{ahead} LOOP
                   m := (date_trunc('month', now()) + make_interval(months => i))::date;
                   EXECUTE format('CREATE TABLE IF NOT EXISTS pgwarden.%I PARTITION OF \
                     pgwarden.audit_log FOR VALUES FROM (%L) TO (%L)',
                     'audit_log_' || to_char(m, 'YYYY_MM'), m, (m + interval '1 month')::date);
                 END LOOP; END $pgw$"
            );
            if let Err(e) = client.batch_execute(&sql).await {
                // The default partition still takes the records.
                tracing::warn!(error = %e, "audit postgres sink: cannot create partitions");
            }
            self.partitioned_at = Some(Instant::now());
        }
        Ok(client)
    }

    /// The last record in the table: where a proxy without a file sink
    /// continues the chain.
    pub async fn tail(&self) -> Result<Option<(u64, String)>, String> {
        let Some(client) = &self.client else { return Ok(None) };
        let row = client
            .query_opt(
                "SELECT seq, record->>'mac' FROM pgwarden.audit_log ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(|e| format!("audit postgres sink: {e}"))?;
        Ok(row.and_then(|r| {
            let seq: i64 = r.get(0);
            let mac: Option<String> = r.get(1);
            Some((u64::try_from(seq).ok()?, mac?))
        }))
    }

    /// Writes batches until the writer stops; a failing write is retried
    /// (reconnecting) until it works, so nothing is lost while Postgres is
    /// down: the writer waits on this task's bounded channel meanwhile.
    pub async fn run(mut self, mut rx: mpsc::Receiver<PgBatch>) {
        while let Some(batch) = rx.recv().await {
            let lines: Vec<&str> = batch.lines.lines().collect();
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.insert(&lines).await {
                    Ok(()) => break,
                    Err(e) => {
                        if !self.failing {
                            tracing::error!(
                                error = %e,
                                "audit postgres sink failing; records wait and are written when \
                                 it recovers"
                            );
                            self.failing = true;
                            self.health.store(true, Ordering::Relaxed);
                        }
                        self.client = None;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if std::mem::take(&mut self.failing) {
                self.health.store(false, Ordering::Relaxed);
                tracing::info!("audit postgres sink recovered");
            }
            self.events.inc_by(batch.count);
            if let Some(done) = batch.done {
                let _ = done.send(());
            }
        }
    }

    async fn insert(&mut self, lines: &[&str]) -> Result<(), String> {
        let client = self.ensure().await?;
        client.execute(INSERT, &[&lines]).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
