//! The one boundary where failures become what a client sees: a SQLSTATE and a
//! message saying what happened and what to do. Messages are built only from the
//! named constructors below, so none can carry key material, plaintext, passwords
//! or upstream addresses.

use bytes::Bytes;

use crate::protocol;

/// A small fixed classification, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client broke the protocol or a limit.
    Client,
    /// Postgres could not be reached or misbehaved.
    Upstream,
    /// The proxy is shutting down or at capacity.
    Proxy,
    /// A connection policy refused the client.
    Policy,
    /// A socket failed; nothing can be sent.
    Io,
}

/// An error to report to the client (when the connection still allows it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{sqlstate}: {message}")]
pub struct ClientError {
    pub kind: ErrorKind,
    pub sqlstate: &'static str,
    pub message: String,
    /// FATAL errors end the session; all errors built here do, for now.
    pub fatal: bool,
}

impl ClientError {
    fn fatal(kind: ErrorKind, sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self { kind, sqlstate, message: message.into(), fatal: true }
    }

    /// 08P01: the client sent something that is not the Postgres protocol.
    pub fn protocol_violation(detail: impl Into<String>) -> Self {
        Self::fatal(ErrorKind::Client, "08P01", format!("protocol violation: {}", detail.into()))
    }

    /// 08P01: a message longer than `listen.max_message_bytes`.
    pub fn message_too_large(len: usize, max: usize) -> Self {
        Self::fatal(
            ErrorKind::Client,
            "08P01",
            format!(
                "message of {len} bytes exceeds the limit of {max} bytes \
                 (listen.max_message_bytes); send smaller statements or raise the limit"
            ),
        )
    }

    /// 08006: Postgres could not be reached. The address is deliberately absent.
    /// A client that pipelines more messages than it reads answers for.
    pub fn too_many_pending() -> Self {
        Self::fatal(
            ErrorKind::Client,
            "08P01",
            format!(
                "more than {} messages sent without reading their answers; read results \
                 before sending more",
                crate::pipeline::MAX_PENDING
            ),
        )
    }

    pub fn upstream_unreachable() -> Self {
        Self::fatal(
            ErrorKind::Upstream,
            "08006",
            "pgwarden could not connect to the database server; try again later, \
             and if it persists ask the operator to check the upstream server",
        )
    }

    /// 08006: Postgres sent something the proxy cannot frame.
    pub fn upstream_protocol_violation() -> Self {
        Self::fatal(
            ErrorKind::Upstream,
            "08006",
            "the database server sent a malformed message; the connection was closed",
        )
    }

    /// 53300: `listen.max_connections` reached.
    pub fn too_many_connections() -> Self {
        Self::fatal(
            ErrorKind::Proxy,
            "53300",
            "sorry, too many clients already: pgwarden is at listen.max_connections; \
             try again later",
        )
    }

    /// 28000: a `[[network]]` rule does not let this role in from here.
    pub fn address_refused(role: &str, rule: usize) -> Self {
        Self::fatal(
            ErrorKind::Policy,
            "28000",
            format!(
                "role \"{role}\" may not connect from this address (network[{rule}] of the \
                 pgwarden configuration); ask the operator to allow it"
            ),
        )
    }

    /// 28000: TLS is required and the client did not use it.
    pub fn tls_required() -> Self {
        Self::fatal(
            ErrorKind::Policy,
            "28000",
            "pgwarden requires TLS for this connection; connect with sslmode=require \
             (or verify-full)",
        )
    }

    /// 28000: `listen.client_ca` is set and the client presented no
    /// certificate (or connected without TLS).
    pub fn client_certificate_required() -> Self {
        Self::fatal(
            ErrorKind::Policy,
            "28000",
            "pgwarden requires a client certificate: connect with TLS and sslcert/sslkey \
             set to a certificate whose common name (CN) is your login role",
        )
    }

    /// 28000: the client certificate's common name is not the login role.
    pub fn certificate_role_mismatch(cn: &str, role: &str) -> Self {
        Self::fatal(
            ErrorKind::Policy,
            "28000",
            format!(
                "the client certificate is for \"{cn}\" but the connection logs in as role \
                 \"{role}\"; log in as \"{cn}\" or use a certificate whose common name (CN) \
                 is \"{role}\""
            ),
        )
    }

    /// 28000: outside the role's allowed hours.
    pub fn outside_hours(role: &str, hours: &str) -> Self {
        Self::fatal(
            ErrorKind::Policy,
            "28000",
            format!("role \"{role}\" may connect only {hours}; try again then"),
        )
    }

    /// 28000: too many failed logins from this address.
    pub fn locked_out(left: std::time::Duration) -> Self {
        let minutes = left.as_secs().div_ceil(60).max(1);
        Self::fatal(
            ErrorKind::Policy,
            "28000",
            format!("too many failed logins; try again in {minutes} minute(s)"),
        )
    }

    /// 53300: `limits.max_connections_per_user` reached.
    pub fn too_many_connections_for_role(role: &str) -> Self {
        Self::fatal(
            ErrorKind::Policy,
            "53300",
            format!(
                "too many connections for role \"{role}\" (limits.max_connections_per_user); \
                 close one or try again later"
            ),
        )
    }

    /// 08006: Postgres was reached, but `upstream.tls` could not be
    /// satisfied (no TLS offered, certificate not trusted or for another
    /// name). The address is deliberately absent.
    pub fn upstream_tls_failed() -> Self {
        Self::fatal(
            ErrorKind::Upstream,
            "08006",
            "pgwarden could not open a secure connection to the database server \
             (upstream.tls); ask the operator to check the server's certificate and \
             upstream.ca",
        )
    }

    /// The text of the 53400 a statement over `limits.queries_per_second_per_user`
    /// gets (raised in its place, as an ERROR: the session stays usable).
    pub fn rate_limited_message(role: &str, rate: u32) -> String {
        format!(
            "role \"{role}\" exceeded its rate of {rate} statements per second \
             (limits.queries_per_second_per_user); the statement was not run, retry it \
             after a pause"
        )
    }

    /// 57P01: the proxy is shutting down.
    pub fn shutting_down() -> Self {
        Self::fatal(
            ErrorKind::Proxy,
            "57P01",
            "terminating connection because pgwarden is shutting down; reconnect to \
             another instance or retry shortly",
        )
    }

    /// 08P01: no startup within `listen.handshake_timeout`.
    pub fn handshake_timeout() -> Self {
        Self::fatal(
            ErrorKind::Client,
            "08P01",
            "connection did not complete startup and authentication within \
             listen.handshake_timeout",
        )
    }

    /// 57P05: idle longer than `listen.idle_timeout`.
    pub fn idle_timeout() -> Self {
        Self::fatal(
            ErrorKind::Client,
            "57P05",
            "terminating connection due to idle timeout (listen.idle_timeout)",
        )
    }

    /// A socket error: nothing will be sent, the connection is gone.
    pub fn io(e: std::io::Error) -> Self {
        Self::fatal(ErrorKind::Io, "08006", format!("connection failure: {}", e.kind()))
    }

    /// This error as an ErrorResponse (B).
    pub fn to_message(&self) -> Bytes {
        let severity = if self.fatal { "FATAL" } else { "ERROR" };
        protocol::error_response(severity, self.sqlstate, &self.message)
    }
}
