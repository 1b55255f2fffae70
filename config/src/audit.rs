//! `[audit]`: the tamper-evident audit log (DESIGN.md, "Audit record").

use serde::Deserialize;

use crate::value::{DurationValue, Secret};

/// Where audit records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    /// JSON lines in `audit.file`, rotated at `audit.rotate_bytes`.
    File,
    /// JSON lines on standard output.
    Stdout,
    /// Table `pgwarden.audit_log` in `upstream.admin_database`, written on
    /// the proxy's own connection (`upstream.admin_user`).
    Postgres,
}

/// What is kept of the literals in a statement's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementLiterals {
    /// Every literal is replaced by a placeholder.
    Redacted,
    /// Literals are kept, except those bound for encrypted columns (and every
    /// literal of a statement the proxy could not analyse), which are replaced.
    All,
}

/// What a session does when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// The session waits for room: nothing is lost, clients slow down.
    Block,
    /// The record is dropped, counted in `pgwarden_audit_dropped_total` and
    /// logged.
    Drop,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Audit {
    /// Where records go: any of `file`, `stdout`, `postgres`. Empty (the
    /// default): no audit log, and sessions do no audit work at all. Needs a
    /// restart.
    pub sinks: Vec<AuditSink>,
    /// The file sink's current file. Default `audit/pgwarden-audit.jsonl`;
    /// rotated files are named `FILE.<seq of their first record>`. Needs a
    /// restart.
    pub file: String,
    /// Size at which the file sink rotates. Default 100 MiB (104857600).
    /// Needs a restart.
    pub rotate_bytes: u64,
    /// Most time between a record written to the file and its fsync; every
    /// rotation and the clean shutdown fsync at once. Default `1s`; `0s`
    /// fsyncs every batch. Needs a restart.
    pub fsync_interval: DurationValue,
    /// The HMAC-SHA256 key of the chain, `env:VAR` or `file:PATH`, at least
    /// 32 bytes. Required when `sinks` is not empty. Needs a restart.
    pub key: Option<Secret>,
    /// `redacted` (the default) or `all`. SIGHUP applies it to new sessions.
    pub statement_literals: StatementLiterals,
    /// `block` (the default) or `drop`. Needs a restart.
    pub on_overflow: Overflow,
    /// Records the queue between sessions and the writer holds. Default
    /// 10000. Needs a restart.
    pub queue_capacity: usize,
    /// Statement fingerprints (16 hex digits, as in the records) that are not
    /// audited: health checks and other noise. Default none. SIGHUP applies
    /// them at once.
    pub exclude_fingerprints: Vec<String>,
    /// Months of `pgwarden.audit_log` partitions created ahead of the
    /// current one. Default 2. Needs a restart.
    pub partitions_ahead: u32,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            file: "audit/pgwarden-audit.jsonl".into(),
            rotate_bytes: 100 * 1024 * 1024,
            fsync_interval: DurationValue::from_secs(1),
            key: None,
            statement_literals: StatementLiterals::Redacted,
            on_overflow: Overflow::Block,
            queue_capacity: 10_000,
            exclude_fingerprints: Vec::new(),
            partitions_ahead: 2,
        }
    }
}

/// Smallest `audit.rotate_bytes` accepted.
pub const MIN_ROTATE_BYTES: u64 = 4096;

/// Shortest audit key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

impl Audit {
    /// Whether the audit log is on.
    pub fn enabled(&self) -> bool {
        !self.sinks.is_empty()
    }
}

pub(crate) fn validate(audit: &Audit, admin_user: &str, problems: &mut Vec<String>) {
    let mut problem = |key: &str, msg: String| problems.push(format!("audit.{key}: {msg}"));
    for (i, s) in audit.sinks.iter().enumerate() {
        if audit.sinks[..i].contains(s) {
            problem("sinks", format!("{s:?} is listed twice"));
        }
    }
    if let Some(e) = audit.fsync_interval.error() {
        problem("fsync_interval", e.to_string());
    }
    if audit.queue_capacity == 0 {
        problem("queue_capacity", "must be at least 1".into());
    }
    for fp in &audit.exclude_fingerprints {
        if fp.len() != 16 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            problem(
                "exclude_fingerprints",
                format!("{fp:?} is not a fingerprint (16 hex digits, as in the records)"),
            );
        }
    }
    if !audit.enabled() {
        return;
    }
    match &audit.key {
        None => problem(
            "key",
            "required when audit.sinks is set: the HMAC key of the chain, as \"env:VAR\" or \
             \"file:PATH\""
                .into(),
        ),
        Some(secret) => match secret.resolve() {
            Err(e) => problem("key", e),
            Ok(k) if k.expose().len() < MIN_KEY_BYTES => problem(
                "key",
                format!("must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`)"),
            ),
            Ok(_) => {}
        },
    }
    if audit.sinks.contains(&AuditSink::File) {
        if audit.file.trim().is_empty() {
            problem("file", "must not be empty with the file sink".into());
        }
        if audit.rotate_bytes < MIN_ROTATE_BYTES {
            problem("rotate_bytes", format!("must be at least {MIN_ROTATE_BYTES}"));
        }
    }
    if audit.sinks.contains(&AuditSink::Postgres) && admin_user.is_empty() {
        problem(
            "sinks",
            "the postgres sink needs upstream.admin_user (it writes on the proxy's own \
             connection)"
                .into(),
        );
    }
}
