//! pgwarden: a PostgreSQL wire-protocol proxy that applications connect to instead
//! of Postgres.
//!
//! It relays every message between client and Postgres unchanged, except for
//! what a proxy must own itself (the cancel keys, the SSL/GSSAPI negotiation,
//! SCRAM channel binding) and what its policies change: registered columns are
//! encrypted on the way in and decrypted, masked or refused on the way out
//! ([`pipeline`]), per login role ([`access`]). It refuses malformed input
//! without harming other clients.
//!
//! # Layout
//! One module per stage of a connection's life:
//! - [`listener`]: accept, the connection cap, graceful shutdown;
//! - [`handshake`]: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage;
//!   [`tls`] builds the TLS acceptor it hands SSLRequests to;
//! - [`policy`]: network rules, per-role caps and lockout, before Postgres;
//! - [`auth`]: relaying authentication, swapping cancel keys;
//! - [`session`]: the two message loops;
//! - [`upstream`]: connecting to Postgres.
//!
//! Beside them: [`access`] (what each role sees of each encrypted column, and
//! the masks), [`protocol`] (framing, the messages we build), [`sql`] (what a
//! statement does to encrypted columns), [`error`] (the
//! one place errors become SQLSTATEs for clients), [`cancel`] (cancel-key map),
//! [`cluster`] (throwaway local Postgres for the demo, tests and benchmarks),
//! [`crypto`] (envelope, ciphers, keyring, logical-type codecs), [`hex`]
//! (bytea's hex digits, eight at a time),
//! [`metrics`] (Prometheus counters, statement timing), [`admin`] (HTTP:
//! /metrics, /healthz, /readyz),
//! [`keys`] (the key and column registry in the database), [`catalog`] (table
//! OID and attribute number of each encrypted column), [`audit`] (the
//! HMAC-chained audit log and its sinks), [`cli`] and [`demo`].

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod crypto;
pub mod demo;
pub mod error;
pub mod handshake;
pub mod hex;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod protocol;
pub mod session;
pub mod sql;
pub mod tls;
pub mod upstream;

pub use listener::{Proxy, ProxyHandle};
