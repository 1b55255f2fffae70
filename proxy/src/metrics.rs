//! Prometheus metrics: the names and labels of DESIGN.md that a pass-through
//! proxy can report, in a [`Metrics`] registry each proxy owns (no global one).
//!
//! Every series is created up front with its fixed label values, so that the
//! hot path only adds to atomics it already holds: a session never hashes a
//! label, takes a lock or allocates to count. Labels come from the small enums
//! below and never carry a statement, a user, a value or an address.
//!
//! Later stages add their metrics here the same way: a field, a line in
//! [`Metrics::new`], and an enum when they need a label.
//!
//! Statements are timed by [`InFlight`], a per-session queue of what was sent
//! and is not yet answered.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Upper bounds of `pgwarden_statement_duration_seconds`: 250 µs to a minute.
const STATEMENT_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Upper bounds of `pgwarden_upstream_connect_seconds`.
const CONNECT_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Declares a label enum: its variants, their label text, and `ALL`.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order (the order of the series).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
    };
}

label_enum! {
    /// How a connection ended: `pgwarden_connections_total{outcome}`.
    ConnectionOutcome {
        /// Authenticated, then ended by the client (Terminate or a closed socket).
        Ok = "ok",
        /// Postgres refused the credentials.
        AuthFailed = "auth_failed",
        /// Over `listen.max_connections`: answered 53300.
        RefusedCapacity = "refused_capacity",
        /// Refused by a connection policy: network rule, hours, lockout or the
        /// per-role cap (28000 or 53300), before Postgres was contacted; or in
        /// the TLS handshake (`listen.min_tls_version`, `listen.client_ca`).
        RefusedPolicy = "refused_policy",
        /// Malformed or oversized protocol message (08P01).
        ProtocolError = "protocol_error",
        /// No authenticated session within `listen.handshake_timeout`.
        HandshakeTimeout = "handshake_timeout",
        /// Idle longer than `listen.idle_timeout` (57P05).
        IdleTimeout = "idle_timeout",
        /// Postgres could not be reached (08006).
        UpstreamUnreachable = "upstream_unreachable",
        /// Postgres closed the connection or broke the protocol.
        UpstreamError = "upstream_error",
        /// The client left before its session was established.
        Abandoned = "abandoned",
        /// A CancelRequest, served; such connections never become sessions.
        CancelRequest = "cancel_request",
        /// Closed by a graceful shutdown (57P01).
        Shutdown = "shutdown",
    }
}

impl ConnectionOutcome {
    /// The denial a connection ending so counts as, for the outcomes that
    /// are pgwarden cutting the client (policy refusals are counted where
    /// they are decided, with their own reason).
    pub fn denial(self) -> Option<Denial> {
        match self {
            ConnectionOutcome::ProtocolError => Some(Denial::Protocol),
            ConnectionOutcome::RefusedCapacity => Some(Denial::Capacity),
            ConnectionOutcome::HandshakeTimeout => Some(Denial::HandshakeTimeout),
            ConnectionOutcome::IdleTimeout => Some(Denial::IdleTimeout),
            _ => None,
        }
    }
}

label_enum! {
    /// Which protocol a statement came through: `pgwarden_statements_total{kind}`.
    StatementKind {
        /// Query (F): the simple protocol, one or more statements per message.
        Simple = "simple",
        /// Parse/Bind/Execute … Sync (F): the extended protocol.
        Extended = "extended",
        /// FunctionCall (F).
        Function = "function",
    }
}

label_enum! {
    /// Why pgwarden refused or cut a client: `pgwarden_denied_total{reason}`.
    /// Policy stages (network, TLS, lockout, rate, column access, threat rules)
    /// add their reasons here.
    Denial {
        /// Malformed or oversized protocol message.
        Protocol = "protocol",
        /// `listen.max_connections` reached.
        Capacity = "capacity",
        /// `listen.handshake_timeout` exceeded.
        HandshakeTimeout = "handshake_timeout",
        /// `listen.idle_timeout` exceeded.
        IdleTimeout = "idle_timeout",
        /// A `[[network]]` rule refused the client's address.
        Network = "network",
        /// Outside a `[[network]]` rule's hours.
        Hours = "hours",
        /// Locked out after too many failed logins.
        Lockout = "lockout",
        /// `limits.max_connections_per_user` reached.
        RoleCapacity = "role_capacity",
        /// TLS required and not used.
        Tls = "tls",
        /// A statement read a column the role is denied, or wrote one it may
        /// not write (42501).
        ColumnAccess = "column_access",
        /// No client certificate, or one whose CN is not the login role.
        Certificate = "certificate",
    }
}

/// `pgwarden_bytes_total{direction}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

/// One proxy's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    /// `pgwarden_connections_active`: connections being served (handshaking or
    /// in session); refused ones are not counted.
    connections_active: IntGauge,
    /// `pgwarden_connections_total{outcome}`, indexed by [`ConnectionOutcome`].
    connections: Vec<IntCounter>,
    /// `pgwarden_statements_total{kind,outcome}`, indexed by
    /// [`StatementKind`] × (ok, error).
    statements: Vec<[IntCounter; 2]>,
    /// `pgwarden_statement_duration_seconds`: Query/Sync/FunctionCall sent to
    /// its ReadyForQuery received.
    statement_duration: Histogram,
    /// `pgwarden_bytes_total{direction}`.
    bytes: [IntCounter; 2],
    /// `pgwarden_auth_failures_total`: logins Postgres refused.
    auth_failures: IntCounter,
    /// `pgwarden_upstream_connect_seconds`: successful TCP connects to Postgres.
    upstream_connect: Histogram,
    /// `pgwarden_upstream_reused_total`: sessions given a kept server
    /// connection (`upstream.reuse_idle`) instead of a new one.
    upstream_reused: IntCounter,
    /// `pgwarden_denied_total{reason}`, indexed by [`Denial`].
    denied: Vec<IntCounter>,
    /// `pgwarden_rate_limited_total`: statements refused with 53400 by
    /// `limits.queries_per_second_per_user` (the session goes on).
    rate_limited: IntCounter,
    /// `pgwarden_crypto_operations_total{op,column}`; children made per
    /// registered column by [`Metrics::columns`].
    crypto_operations: IntCounterVec,
    /// `pgwarden_masked_values_total{column}`.
    masked_values: IntCounterVec,
    /// `pgwarden_crypto_duration_seconds`: one value decrypted, sampled.
    crypto_duration: Histogram,
    /// `pgwarden_lockouts_active`: (role, address) pairs locked out now, set
    /// when scraped.
    pub lockouts_active: IntGauge,
    /// `pgwarden_audit_events_total{sink}`: records written, by sink (file,
    /// stdout, postgres).
    audit_events: [IntCounter; 3],
    /// `pgwarden_audit_queue_depth`: records queued for the writer.
    audit_queue_depth: IntGauge,
    /// `pgwarden_audit_dropped_total`: records lost to a full queue
    /// (`audit.on_overflow = "drop"`).
    audit_dropped: IntCounter,
}

/// Per registered column (by [`crate::sql::EncryptedColumn::id`]), the
/// counters the encryption pipeline adds to, and the column-access denials.
#[derive(Debug, Clone, Default)]
pub struct ColumnMetrics {
    encrypted: Vec<IntCounter>,
    decrypted: Vec<IntCounter>,
    masked: Vec<IntCounter>,
    denied: Option<IntCounter>,
    duration: Option<Histogram>,
}

/// What one session's pipeline did since it last reported, per column:
/// plain integers on the per-value path, added to the shared counters once
/// per round trip.
#[derive(Debug, Default)]
pub struct ColumnTally {
    /// (encrypted, decrypted, masked) per column id.
    counts: Vec<[u64; 3]>,
    dirty: bool,
    /// Values since the last timed one.
    since_sample: u32,
}

/// One value in this many is timed for `pgwarden_crypto_duration_seconds`:
/// a clock read per value would cost more than some decryptions.
const CRYPTO_SAMPLE: u32 = 64;

impl ColumnTally {
    pub fn encrypted(&mut self, id: usize) {
        self.add(id, 0);
    }

    pub fn decrypted(&mut self, id: usize) {
        self.add(id, 1);
    }

    pub fn masked(&mut self, id: usize) {
        self.add(id, 2);
    }

    #[inline]
    fn add(&mut self, id: usize, what: usize) {
        if id >= self.counts.len() {
            self.counts.resize(id + 1, [0; 3]);
        }
        self.counts[id][what] += 1;
        self.dirty = true;
    }

    /// Whether to time the next crypto operation.
    #[inline]
    pub fn sample(&mut self) -> bool {
        self.since_sample += 1;
        if self.since_sample >= CRYPTO_SAMPLE {
            self.since_sample = 0;
            true
        } else {
            false
        }
    }

    /// Adds what was counted to `to`, and starts again.
    pub fn flush(&mut self, to: &ColumnMetrics) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        for (id, counts) in self.counts.iter_mut().enumerate() {
            for (n, counters) in counts.iter_mut().zip([&to.encrypted, &to.decrypted, &to.masked]) {
                if *n > 0 {
                    if let Some(c) = counters.get(id) {
                        c.inc_by(*n);
                    }
                    *n = 0;
                }
            }
        }
    }
}

impl ColumnMetrics {
    /// A 42501 for a column the role may not read or write.
    pub fn denied(&self) {
        if let Some(c) = &self.denied {
            c.inc();
        }
    }

    /// One timed decryption.
    pub fn observe(&self, seconds: f64) {
        if let Some(h) = &self.duration {
            h.observe(seconds);
        }
    }
}

impl Metrics {
    /// A fresh registry with every pgwarden series at zero. Fails only if two
    /// metrics were given the same name, which is a bug caught by any test.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);

        let build = IntGaugeVec::new(
            Opts::new("pgwarden_build_info", "pgwarden's version; the value is always 1"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg(Box::new(build))?;

        let connections_active =
            IntGauge::new("pgwarden_connections_active", "Client connections being served")?;
        reg(Box::new(connections_active.clone()))?;

        let by_outcome = IntCounterVec::new(
            Opts::new("pgwarden_connections_total", "Client connections ended, by how they ended"),
            &["outcome"],
        )?;
        let connections = ConnectionOutcome::ALL
            .iter()
            .map(|o| by_outcome.with_label_values(&[o.as_str()]))
            .collect();
        reg(Box::new(by_outcome))?;

        let by_kind = IntCounterVec::new(
            Opts::new(
                "pgwarden_statements_total",
                "Statements completed (CommandComplete) or failed (ErrorResponse), by protocol",
            ),
            &["kind", "outcome"],
        )?;
        let statements = StatementKind::ALL
            .iter()
            .map(|k| {
                [
                    by_kind.with_label_values(&[k.as_str(), "ok"]),
                    by_kind.with_label_values(&[k.as_str(), "error"]),
                ]
            })
            .collect();
        reg(Box::new(by_kind))?;

        let statement_duration = Histogram::with_opts(
            HistogramOpts::new(
                "pgwarden_statement_duration_seconds",
                "Time from a Query, Sync or FunctionCall sent to Postgres to its ReadyForQuery",
            )
            .buckets(STATEMENT_BUCKETS.to_vec()),
        )?;
        reg(Box::new(statement_duration.clone()))?;

        let by_direction = IntCounterVec::new(
            Opts::new("pgwarden_bytes_total", "Protocol bytes relayed, by direction"),
            &["direction"],
        )?;
        let bytes = [
            by_direction.with_label_values(&["client_to_upstream"]),
            by_direction.with_label_values(&["upstream_to_client"]),
        ];
        reg(Box::new(by_direction))?;

        let auth_failures =
            IntCounter::new("pgwarden_auth_failures_total", "Logins that Postgres refused")?;
        reg(Box::new(auth_failures.clone()))?;

        let upstream_connect = Histogram::with_opts(
            HistogramOpts::new(
                "pgwarden_upstream_connect_seconds",
                "Time to open a TCP connection to Postgres (successful attempts)",
            )
            .buckets(CONNECT_BUCKETS.to_vec()),
        )?;
        reg(Box::new(upstream_connect.clone()))?;

        let upstream_reused = IntCounter::new(
            "pgwarden_upstream_reused_total",
            "Sessions given a server connection kept from an earlier client (upstream.reuse_idle)",
        )?;
        reg(Box::new(upstream_reused.clone()))?;

        let by_reason = IntCounterVec::new(
            Opts::new("pgwarden_denied_total", "Connections pgwarden refused or cut, by reason"),
            &["reason"],
        )?;
        let denied =
            Denial::ALL.iter().map(|d| by_reason.with_label_values(&[d.as_str()])).collect();
        reg(Box::new(by_reason))?;

        let rate_limited = IntCounter::new(
            "pgwarden_rate_limited_total",
            "Statements refused (53400) by limits.queries_per_second_per_user",
        )?;
        reg(Box::new(rate_limited.clone()))?;

        let crypto_operations = IntCounterVec::new(
            Opts::new(
                "pgwarden_crypto_operations_total",
                "Values of encrypted columns encrypted or decrypted, by column",
            ),
            &["op", "column"],
        )?;
        reg(Box::new(crypto_operations.clone()))?;
        let masked_values = IntCounterVec::new(
            Opts::new("pgwarden_masked_values_total", "Values shown masked, by column"),
            &["column"],
        )?;
        reg(Box::new(masked_values.clone()))?;
        let crypto_duration = Histogram::with_opts(
            HistogramOpts::new(
                "pgwarden_crypto_duration_seconds",
                "Time to decrypt one value of an encrypted column (one value in 64 is timed)",
            )
            .buckets(vec![1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3]),
        )?;
        reg(Box::new(crypto_duration.clone()))?;
        let lockouts_active = IntGauge::new(
            "pgwarden_lockouts_active",
            "(role, client address) pairs locked out after failed logins",
        )?;
        reg(Box::new(lockouts_active.clone()))?;
        let by_sink = IntCounterVec::new(
            Opts::new("pgwarden_audit_events_total", "Audit records written, by sink"),
            &["sink"],
        )?;
        let audit_events = ["file", "stdout", "postgres"].map(|s| by_sink.with_label_values(&[s]));
        reg(Box::new(by_sink))?;
        let audit_queue_depth =
            IntGauge::new("pgwarden_audit_queue_depth", "Audit records queued for the writer")?;
        reg(Box::new(audit_queue_depth.clone()))?;
        let audit_dropped = IntCounter::new(
            "pgwarden_audit_dropped_total",
            "Audit records dropped because the queue was full (audit.on_overflow = \"drop\")",
        )?;
        reg(Box::new(audit_dropped.clone()))?;

        Ok(Self {
            audit_events,
            audit_queue_depth,
            audit_dropped,
            registry,
            connections_active,
            connections,
            statements,
            statement_duration,
            bytes,
            auth_failures,
            upstream_connect,
            upstream_reused,
            denied,
            rate_limited,
            crypto_operations,
            masked_values,
            crypto_duration,
            lockouts_active,
        })
    }

    /// The counters of the registered columns, `names` in configuration
    /// order (their ids).
    pub fn columns<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> ColumnMetrics {
        let mut m = ColumnMetrics {
            denied: self.denied.get(Denial::ColumnAccess as usize).cloned(),
            duration: Some(self.crypto_duration.clone()),
            ..ColumnMetrics::default()
        };
        for name in names {
            m.encrypted.push(self.crypto_operations.with_label_values(&["encrypt", name]));
            m.decrypted.push(self.crypto_operations.with_label_values(&["decrypt", name]));
            m.masked.push(self.masked_values.with_label_values(&[name]));
        }
        m
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Writing into a Vec fails only on a malformed metric family, which
        // the registry cannot hold.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// The registry, for stages that register collectors of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a connection as served until the guard drops.
    pub fn connection_opened(&self) -> ActiveConnection {
        self.connections_active.inc();
        ActiveConnection(self.connections_active.clone())
    }

    pub fn connection_ended(&self, outcome: ConnectionOutcome) {
        if let Some(c) = self.connections.get(outcome as usize) {
            c.inc();
        }
        if outcome == ConnectionOutcome::AuthFailed {
            self.auth_failures.inc();
        }
        if let Some(why) = outcome.denial() {
            self.denied(why);
        }
    }

    pub fn denied(&self, reason: Denial) {
        if let Some(c) = self.denied.get(reason as usize) {
            c.inc();
        }
    }

    /// `pgwarden_audit_events_total` of sink 0 (file), 1 (stdout) or 2
    /// (postgres).
    pub fn audit_events(&self, sink: usize) -> IntCounter {
        self.audit_events[sink.min(2)].clone()
    }

    pub fn audit_queue_depth(&self) -> IntGauge {
        self.audit_queue_depth.clone()
    }

    pub fn audit_dropped(&self) -> IntCounter {
        self.audit_dropped.clone()
    }

    /// A statement refused by the rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Adds one read's worth of relayed bytes: called per batch, not per message.
    #[inline]
    pub fn bytes(&self, direction: Direction, n: usize) {
        self.bytes[direction as usize].inc_by(n as u64);
    }

    pub fn upstream_reused(&self) {
        self.upstream_reused.inc();
    }

    pub fn upstream_connected(&self, seconds: f64) {
        self.upstream_connect.observe(seconds);
    }

    /// Records what one ReadyForQuery closed: `ok` statements completed and
    /// `errors` failed, sent `seconds` before (unknown when not timed). A
    /// round trip that ran no statement (a Sync after Parse/Describe only, an
    /// empty query) is not counted.
    pub fn statements(&self, kind: StatementKind, ok: u32, errors: u32, seconds: Option<f64>) {
        if ok == 0 && errors == 0 {
            return;
        }
        if let Some([ok_counter, error_counter]) = self.statements.get(kind as usize) {
            if ok > 0 {
                ok_counter.inc_by(ok.into());
            }
            if errors > 0 {
                error_counter.inc_by(errors.into());
            }
        }
        if let Some(s) = seconds {
            self.statement_duration.observe(s);
        }
    }
}

/// Decrements `pgwarden_connections_active` when dropped, however the
/// connection's task ends.
pub struct ActiveConnection(IntGauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How many unanswered round trips [`InFlight`] times; more (deep pipelines)
/// are still counted, by the kind of the last one sent, but not timed.
const IN_FLIGHT_SLOTS: u32 = 64;

/// The round trips of one session that were sent and not yet answered by a
/// ReadyForQuery, oldest first: a single-producer (client → Postgres loop),
/// single-consumer (Postgres → client loop) ring of atomics, so that neither
/// loop takes a lock or allocates. Each slot holds the kind and the send time
/// (µs since the session's epoch).
pub struct InFlight {
    epoch: Instant,
    slots: [AtomicU64; IN_FLIGHT_SLOTS as usize],
    /// Next slot to read; written by the consumer only.
    head: AtomicU32,
    /// Next slot to write; written by the producer only.
    tail: AtomicU32,
    /// Round trips sent while the ring was full. While non-zero nothing is
    /// queued, so that the ring only ever holds ones older than these.
    overflow: AtomicU32,
    /// Kind of the last round trip counted in `overflow`.
    overflow_kind: AtomicU8,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            overflow: AtomicU32::new(0),
            overflow_kind: AtomicU8::new(0),
        }
    }
}

impl InFlight {
    /// Microseconds since the session began: one clock read (vDSO, no
    /// syscall). Callers read it once per batch, and only when the batch
    /// holds a round trip.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX >> 2)
    }

    /// A Query, Sync or FunctionCall was sent at `now_us`. Producer side only.
    pub fn sent(&self, kind: StatementKind, now_us: u64) {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if self.overflow.load(Ordering::Acquire) > 0 || tail.wrapping_sub(head) >= IN_FLIGHT_SLOTS {
            self.overflow_kind.store(kind as u8, Ordering::Relaxed);
            self.overflow.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let slot = &self.slots[(tail % IN_FLIGHT_SLOTS) as usize];
        slot.store((now_us.min(u64::MAX >> 2) << 2) | kind as u64, Ordering::Relaxed);
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
    }

    /// A ReadyForQuery arrived at `now_us`: the oldest round trip's kind and
    /// its duration in seconds (`None` when it was not timed), or `None` when
    /// nothing was owed. Consumer side only.
    pub fn answered(&self, now_us: u64) -> Option<(StatementKind, Option<f64>)> {
        let head = self.head.load(Ordering::Relaxed);
        if head != self.tail.load(Ordering::Acquire) {
            let v = self.slots[(head % IN_FLIGHT_SLOTS) as usize].load(Ordering::Relaxed);
            self.head.store(head.wrapping_add(1), Ordering::Release);
            let seconds = now_us.saturating_sub(v >> 2) as f64 / 1e6;
            return Some((kind_of(v & 3), Some(seconds)));
        }
        let taken =
            self.overflow.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        taken.ok().map(|_| (kind_of(self.overflow_kind.load(Ordering::Relaxed).into()), None))
    }
}

fn kind_of(bits: u64) -> StatementKind {
    match bits {
        0 => StatementKind::Simple,
        2 => StatementKind::Function,
        _ => StatementKind::Extended,
    }
}

/// What the Postgres → client loop has seen of the oldest unanswered round
/// trip: plain integers, added to per message and flushed at ReadyForQuery.
#[derive(Debug, Default)]
pub struct RoundTrip {
    /// CommandComplete (B) and FunctionCallResponse (B) seen.
    pub ok: u32,
    /// ErrorResponse (B) seen.
    pub errors: u32,
}

impl RoundTrip {
    /// Looks at one message from Postgres. Adds integers only.
    #[inline]
    pub fn saw(&mut self, tag: u8) {
        match tag {
            b'C' | b'V' => self.ok = self.ok.saturating_add(1),
            b'E' => self.errors = self.errors.saturating_add(1),
            _ => {}
        }
    }

    /// The ReadyForQuery (B) that ends the round trip arrived: record it.
    pub fn ready(&mut self, in_flight: &InFlight, now_us: u64, metrics: &Metrics) {
        let RoundTrip { ok, errors } = std::mem::take(self);
        if let Some((kind, seconds)) = in_flight.answered(now_us) {
            metrics.statements(kind, ok, errors, seconds);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    #[test]
    fn every_series_exists_at_zero_before_anything_happens() {
        let m = Metrics::new().unwrap();
        let t = text(&m);
        for line in [
            "pgwarden_connections_active 0",
            "pgwarden_connections_total{outcome=\"ok\"} 0",
            "pgwarden_connections_total{outcome=\"refused_capacity\"} 0",
            "pgwarden_statements_total{kind=\"extended\",outcome=\"error\"} 0",
            "pgwarden_bytes_total{direction=\"upstream_to_client\"} 0",
            "pgwarden_auth_failures_total 0",
            "pgwarden_denied_total{reason=\"protocol\"} 0",
            "pgwarden_statement_duration_seconds_count 0",
            "pgwarden_upstream_connect_seconds_count 0",
            "pgwarden_rate_limited_total 0",
        ] {
            assert!(t.contains(&format!("{line}\n")), "missing {line} in\n{t}");
        }
        let version = format!("pgwarden_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(t.contains(&version), "{t}");
    }

    #[test]
    fn outcomes_that_are_refusals_also_count_as_denials() {
        let m = Metrics::new().unwrap();
        m.connection_ended(ConnectionOutcome::RefusedCapacity);
        m.connection_ended(ConnectionOutcome::AuthFailed);
        m.connection_ended(ConnectionOutcome::Ok);
        let t = text(&m);
        assert!(t.contains("pgwarden_denied_total{reason=\"capacity\"} 1\n"), "{t}");
        assert!(t.contains("pgwarden_auth_failures_total 1\n"), "{t}");
        assert!(t.contains("pgwarden_connections_total{outcome=\"ok\"} 1\n"), "{t}");
    }

    #[test]
    fn active_connections_fall_when_the_guard_drops() {
        let m = Metrics::new().unwrap();
        let a = m.connection_opened();
        let b = m.connection_opened();
        assert!(text(&m).contains("pgwarden_connections_active 2\n"));
        drop(a);
        drop(b);
        assert!(text(&m).contains("pgwarden_connections_active 0\n"));
    }

    #[test]
    fn round_trips_are_answered_in_the_order_they_were_sent() {
        let f = InFlight::default();
        f.sent(StatementKind::Simple, 10);
        f.sent(StatementKind::Extended, 20);
        f.sent(StatementKind::Function, 30);
        assert_eq!(f.answered(110), Some((StatementKind::Simple, Some(100e-6))));
        assert_eq!(f.answered(120), Some((StatementKind::Extended, Some(100e-6))));
        assert_eq!(f.answered(130), Some((StatementKind::Function, Some(100e-6))));
        assert_eq!(f.answered(140), None, "nothing was owed");
    }

    #[test]
    fn a_pipeline_deeper_than_the_ring_is_counted_but_not_timed() {
        let f = InFlight::default();
        for _ in 0..IN_FLIGHT_SLOTS {
            f.sent(StatementKind::Extended, 1);
        }
        f.sent(StatementKind::Simple, 2);
        // Room again, but the overflowed one is still owed: order is kept.
        assert!(f.answered(3).unwrap().1.is_some());
        f.sent(StatementKind::Simple, 4);
        for _ in 1..IN_FLIGHT_SLOTS {
            assert_eq!(f.answered(5).unwrap().0, StatementKind::Extended);
        }
        assert_eq!(f.answered(6), Some((StatementKind::Simple, None)));
        assert_eq!(f.answered(6), Some((StatementKind::Simple, None)));
        assert_eq!(f.answered(6), None);
        f.sent(StatementKind::Function, 7);
        assert_eq!(f.answered(8), Some((StatementKind::Function, Some(1e-6))));
    }

    #[test]
    fn a_round_trip_counts_its_completions_and_errors() {
        let m = Metrics::new().unwrap();
        let f = InFlight::default();
        let mut rt = RoundTrip::default();
        // "SELECT 1; SELECT 1/0" as one Query: one completes, one fails.
        f.sent(StatementKind::Simple, 0);
        for tag in [b'T', b'D', b'C', b'T', b'E'] {
            rt.saw(tag);
        }
        rt.ready(&f, 2_000, &m);
        // Parse/Describe/Sync only: a round trip, but no statement.
        f.sent(StatementKind::Extended, 0);
        for tag in [b'1', b't', b'T'] {
            rt.saw(tag);
        }
        rt.ready(&f, 2_000, &m);
        let t = text(&m);
        assert!(t.contains("pgwarden_statements_total{kind=\"simple\",outcome=\"ok\"} 1\n"), "{t}");
        assert!(t.contains("pgwarden_statements_total{kind=\"simple\",outcome=\"error\"} 1\n"));
        assert!(t.contains("pgwarden_statements_total{kind=\"extended\",outcome=\"ok\"} 0\n"));
        assert!(t.contains("pgwarden_statement_duration_seconds_count 1\n"), "{t}");
        assert!(t.contains("pgwarden_statement_duration_seconds_bucket{le=\"0.0025\"} 1\n"), "{t}");
    }
}
