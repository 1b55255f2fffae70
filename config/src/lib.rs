//! pgwarden's configuration: the TOML file operators write, its defaults, and the
//! checks that turn a typo into an error with its key path instead of a surprise in
//! production.
//!
//! # Layout
//! - [`Config`] and its sections: the schema. Every field's doc gives its default
//!   and whether `SIGHUP` reloads it. Defaults live in the `Default` impls only.
//! - [`value`]: leaf types that parse text (durations, secrets) without stopping
//!   deserialization, so that [`Config::validate`] can report every problem at once.
//! - [`load`]: reading a file, applying `PGWARDEN__SECTION__KEY` environment
//!   overrides, collecting unknown keys, validating.
//!
//! Unknown keys are errors. They are collected with `serde_ignored` rather than
//! `deny_unknown_fields`, because the latter stops at the first one.

mod access;
mod audit;
mod columns;
mod load;
mod logical_type;
mod policy;
pub mod value;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

pub use access::{Access, AccessLevel, ColumnPattern, Mask, Policy};
pub use audit::{Audit, AuditSink, Overflow, StatementLiterals, MIN_KEY_BYTES, MIN_ROTATE_BYTES};
pub use columns::{Classification, Column, ColumnMode, Keys, LogicalType, COMPLIANCE_FRAMEWORKS};
pub use load::{load_file, load_str, ConfigError};
pub use logical_type::UnknownType;
pub use policy::{parse_net, Limits, NetworkRule, TimeWindow};
pub use value::{DurationValue, Secret, SecretString};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where clients connect, and the limits applied to them.
    pub listen: Listen,
    /// The Postgres server behind the proxy.
    pub upstream: Upstream,
    /// The master key that wraps the data keys.
    pub keys: Keys,
    /// Who may connect from where and when. SIGHUP applies them to new sessions.
    pub network: Vec<NetworkRule>,
    /// Per-role connection caps and failed-login lockout.
    pub limits: Limits,
    /// Encrypted columns, in `upstream.admin_database`. The proxy encrypts
    /// and decrypts them for sessions on that database, and does not start if
    /// it cannot load their keys or find them. Needs a restart.
    pub columns: Vec<Column>,
    /// What a role gets of an encrypted column no policy names it for.
    pub access: Access,
    /// What each login role gets of each encrypted column: full, masked,
    /// ciphertext or deny, and whether it may write it. SIGHUP applies them
    /// from the next statement of every session.
    pub policies: Vec<Policy>,
    /// The admin HTTP endpoints: Prometheus metrics, liveness, readiness.
    pub metrics: Metrics,
    /// The audit log: sinks, chain key, redaction, filters. Off by default.
    pub audit: Audit,
}

/// `[listen]`: the client-facing socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Listen {
    /// Address and port to accept clients on. Default `0.0.0.0:6432`. Needs a restart.
    pub address: String,
    /// Connections open at once; one more gets SQLSTATE 53300. Default 1000.
    /// Needs a restart.
    pub max_connections: u32,
    /// Largest message a client may send, in bytes; a larger one gets 08P01 and a
    /// closed connection. Protects memory from a hostile length prefix.
    /// Default 64 MiB. SIGHUP applies it to new sessions.
    pub max_message_bytes: u32,
    /// Time a client has from connecting to finishing authentication. Default
    /// `30s`. SIGHUP applies it to new sessions.
    pub handshake_timeout: DurationValue,
    /// A client that sends nothing for this long while no statement runs is
    /// disconnected. `0s` (the default) disables it. SIGHUP applies it to new
    /// sessions.
    pub idle_timeout: DurationValue,
    /// On SIGTERM/SIGINT, how long running statements may take to finish before
    /// their sessions are closed with 57P01. Default `30s`. SIGHUP applies it to
    /// new sessions.
    pub shutdown_grace: DurationValue,
    /// PEM certificate chain for TLS toward clients; TLS is off while empty
    /// (the default), and SSLRequest is answered 'N'. SIGHUP reads the files
    /// again (rotated certificates apply to new connections).
    pub tls_cert: String,
    /// PEM private key for `tls_cert`. Reread on SIGHUP.
    pub tls_key: String,
    /// Refuse clients that do not use TLS (28000). Default false. SIGHUP
    /// applies it to new sessions.
    pub require_tls: bool,
    /// Oldest TLS version accepted: "1.2" (the default) or "1.3". SIGHUP
    /// applies it to new connections.
    pub min_tls_version: String,
    /// PEM file of the CA(s) that sign client certificates. Set, every client
    /// must connect with TLS and present a certificate issued by one of them
    /// whose common name (CN) is the login role (28000 otherwise); plaintext
    /// clients are refused. Empty (the default): no client certificates.
    /// Needs `tls_cert`. Reread on SIGHUP with the certificate.
    pub client_ca: String,
    /// Threads serving connections. 0 (the default): one per CPU. 1 runs every
    /// session on one thread, which spends the least CPU per message where the
    /// proxy shares a small machine with Postgres. Needs a restart.
    pub worker_threads: u16,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            address: "0.0.0.0:6432".into(),
            max_connections: 1000,
            max_message_bytes: 64 * 1024 * 1024,
            handshake_timeout: DurationValue::from_secs(30),
            idle_timeout: DurationValue::from_secs(0),
            shutdown_grace: DurationValue::from_secs(30),
            worker_threads: 0,
            tls_cert: String::new(),
            tls_key: String::new(),
            require_tls: false,
            min_tls_version: "1.2".into(),
            client_ca: String::new(),
        }
    }
}

/// `[upstream]`: the Postgres server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Upstream {
    /// Host name or IP address of Postgres. Default `127.0.0.1`. Needs a restart.
    pub host: String,
    /// Port of Postgres. Default 5432. Needs a restart.
    pub port: u16,
    /// TLS toward Postgres, as libpq's `sslmode`: `disable`, `prefer` (the
    /// default, as libpq's: TLS if the server offers it, plaintext only when it
    /// answers that it has no TLS), `require` (TLS, certificate not checked),
    /// `verify-ca` (certificate chain checked against `ca`), `verify-full`
    /// (also the server name against `host`). Used by sessions and by the
    /// proxy's own connection. Needs a restart.
    pub tls: UpstreamTls,
    /// PEM file of the CA(s) that sign Postgres' certificate; required by
    /// `verify-ca` and `verify-full`. Default empty. Needs a restart.
    pub ca: String,
    /// Time allowed to open a connection to Postgres. Default `10s`.
    pub connect_timeout: DurationValue,
    /// The proxy's own login, for catalog, keys and the audit sink. Empty (the
    /// default): the proxy opens no connection of its own, which is enough for a
    /// pure pass-through proxy.
    pub admin_user: String,
    /// Password of `admin_user`, as `env:VAR` or `file:PATH`. Default none.
    pub admin_password: Option<Secret>,
    /// Database the proxy's own connection uses. Default `postgres`.
    pub admin_database: String,
    /// Server connections kept for reuse by later clients, at most, over all
    /// (user, database, startup parameters). Only logins Postgres admits
    /// without asking the client for anything (trust; `cert` or `ident` of
    /// the proxy's own connection) are kept, after `DISCARD ALL`: a password,
    /// md5 or SCRAM login always gets a connection of its own, since the proxy
    /// relays authentication and never holds what would check the next
    /// client. Default 0 (off). Needs a restart.
    pub reuse_idle: u32,
    /// A kept connection unused this long is closed. Default `60s`. Needs a
    /// restart.
    pub reuse_idle_timeout: DurationValue,
    /// A connection is not kept, or kept longer, once it is this old.
    /// Default `1h`. Needs a restart.
    pub reuse_lifetime: DurationValue,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            tls: UpstreamTls::Prefer,
            ca: String::new(),
            connect_timeout: DurationValue::from_secs(10),
            admin_user: String::new(),
            admin_password: None,
            admin_database: "postgres".into(),
            reuse_idle: 0,
            reuse_idle_timeout: DurationValue::from_secs(60),
            reuse_lifetime: DurationValue::from_secs(3600),
        }
    }
}

/// `upstream.tls`, with libpq's `sslmode` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// `[metrics]`: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Address and port of the admin HTTP server. Default `127.0.0.1:9187`; an
    /// empty string turns the server off. An address written in the file (or set
    /// with `PGWARDEN__METRICS__ADDRESS`) must bind or pgwarden does not start;
    /// the default is best effort, so that a second pgwarden on one host still
    /// runs (without endpoints, with a warning). Needs a restart.
    pub address: Option<String>,
}

/// Where the admin HTTP server listens, as [`Metrics::listen`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// `metrics.address = ""`: no admin server.
    Off,
    /// `metrics.address` unset: bind this if it is free, else warn and go on.
    Default(SocketAddr),
    /// `metrics.address` set: bind it or refuse to start.
    Configured(SocketAddr),
}

/// `metrics.address` when the file does not set it.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9187";

impl Metrics {
    /// The admin server's address. Only meaningful after [`Config::validate`]
    /// passed (an invalid address reads as [`AdminListen::Off`]).
    pub fn listen(&self) -> AdminListen {
        match self.address.as_deref().map(str::trim) {
            None => DEFAULT_METRICS_ADDRESS.parse().map_or(AdminListen::Off, AdminListen::Default),
            Some("") => AdminListen::Off,
            Some(a) => a.parse().map_or(AdminListen::Off, AdminListen::Configured),
        }
    }
}

/// Largest `listen.max_message_bytes` accepted: Postgres itself refuses messages
/// over 1 GiB.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 1 << 30;

/// Smallest `listen.max_message_bytes` accepted: below this, ordinary startup and
/// authentication messages would not fit.
pub const MIN_MESSAGE_BYTES_LIMIT: u32 = 16 * 1024;

impl Config {
    /// Every problem in the configuration, each prefixed with its key path.
    /// Empty means valid.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, msg: String| problems.push(format!("{key}: {msg}"));

        if let Err(e) = self.listen.address.parse::<SocketAddr>() {
            problem(
                "listen.address",
                format!("{:?} is not an IP address with a port ({e})", self.listen.address),
            );
        }
        if self.listen.max_connections == 0 {
            problem("listen.max_connections", "must be at least 1".into());
        }
        let mb = self.listen.max_message_bytes;
        if !(MIN_MESSAGE_BYTES_LIMIT..=MAX_MESSAGE_BYTES_LIMIT).contains(&mb) {
            problem(
                "listen.max_message_bytes",
                format!("{mb} is outside {MIN_MESSAGE_BYTES_LIMIT}..={MAX_MESSAGE_BYTES_LIMIT}"),
            );
        }
        for (key, d) in [
            ("listen.handshake_timeout", &self.listen.handshake_timeout),
            ("listen.idle_timeout", &self.listen.idle_timeout),
            ("listen.shutdown_grace", &self.listen.shutdown_grace),
            ("upstream.connect_timeout", &self.upstream.connect_timeout),
            ("upstream.reuse_idle_timeout", &self.upstream.reuse_idle_timeout),
            ("upstream.reuse_lifetime", &self.upstream.reuse_lifetime),
        ] {
            if let Some(e) = d.error() {
                problem(key, e.to_string());
            }
        }
        if self.listen.handshake_timeout.get().is_zero() {
            problem("listen.handshake_timeout", "must be more than 0s".into());
        }
        if self.upstream.connect_timeout.get().is_zero() {
            problem("upstream.connect_timeout", "must be more than 0s".into());
        }

        if self.upstream.host.trim().is_empty() {
            problem("upstream.host", "must not be empty".into());
        }
        if self.upstream.port == 0 {
            problem("upstream.port", "must be between 1 and 65535".into());
        }
        let verify = matches!(self.upstream.tls, UpstreamTls::VerifyCa | UpstreamTls::VerifyFull);
        if verify && self.upstream.ca.is_empty() {
            problem(
                "upstream.ca",
                "required by upstream.tls = \"verify-ca\" or \"verify-full\": the PEM file of \
                 the CA that signed Postgres' certificate"
                    .into(),
            );
        }
        if !self.upstream.ca.is_empty() && std::fs::metadata(&self.upstream.ca).is_err() {
            problem("upstream.ca", format!("cannot read {}", self.upstream.ca));
        }
        if let Some(secret) = &self.upstream.admin_password {
            if let Err(e) = secret.resolve() {
                problem("upstream.admin_password", e);
            }
            if self.upstream.admin_user.is_empty() {
                problem(
                    "upstream.admin_password",
                    "is set but upstream.admin_user is empty".into(),
                );
            }
        }
        if let Some(address) = self.metrics.address.as_deref().filter(|a| !a.trim().is_empty()) {
            match address.trim().parse::<SocketAddr>() {
                Err(e) => problem(
                    "metrics.address",
                    format!(
                        "{address:?} is not an IP address with a port ({e}); write e.g. \
                         \"127.0.0.1:9187\", or \"\" to turn the admin endpoints off"
                    ),
                ),
                Ok(admin) => {
                    if self.listen_addr().is_some_and(|l| same_socket(l, admin)) {
                        problem("metrics.address", "must differ from listen.address".into());
                    }
                }
            }
        }
        let l = &self.listen;
        if l.tls_cert.is_empty() != l.tls_key.is_empty() {
            problems.push("listen.tls_cert: tls_cert and tls_key must be set together".into());
        }
        for (key, path) in [("listen.tls_cert", &l.tls_cert), ("listen.tls_key", &l.tls_key)] {
            if !path.is_empty() && std::fs::metadata(path).is_err() {
                problems.push(format!("{key}: cannot read {path}"));
            }
        }
        if !matches!(l.min_tls_version.as_str(), "1.2" | "1.3") {
            problems.push(format!(
                "listen.min_tls_version: {:?} is not \"1.2\" or \"1.3\"",
                l.min_tls_version
            ));
        }
        if l.require_tls && l.tls_cert.is_empty() {
            problems.push("listen.require_tls: needs listen.tls_cert and listen.tls_key".into());
        }
        if !l.client_ca.is_empty() {
            if l.tls_cert.is_empty() {
                problems.push("listen.client_ca: needs listen.tls_cert and listen.tls_key".into());
            }
            if std::fs::metadata(&l.client_ca).is_err() {
                problems.push(format!("listen.client_ca: cannot read {}", l.client_ca));
            }
        }
        columns::validate(&self.keys, &self.columns, &mut problems);
        audit::validate(&self.audit, &self.upstream.admin_user, &mut problems);
        access::validate(&self.access, &self.policies, &self.columns, &mut problems);
        policy::validate(
            &self.network,
            &self.limits,
            !self.listen.tls_cert.is_empty(),
            &mut problems,
        );
        if !self.columns.is_empty() && self.upstream.admin_user.is_empty() {
            problems.push(
                "upstream.admin_user: required when columns are registered (the proxy reads \
                 keys and the catalog on its own connection)"
                    .into(),
            );
        }
        problems
    }

    /// `listen.address`, parsed. Only meaningful after [`Config::validate`] passed.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.address.parse().ok()
    }
}

/// Whether binding both addresses would collide: the same non-zero port on the
/// same IP, or on an unspecified one (`0.0.0.0` binds every address).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Listen {
    /// `idle_timeout` as an option: `None` when disabled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        let d = self.idle_timeout.get();
        (!d.is_zero()).then_some(d)
    }
}

#[cfg(test)]
mod tests;
