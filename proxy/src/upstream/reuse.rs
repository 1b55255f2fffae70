//! Server connections kept for later clients (`upstream.reuse_idle`).
//!
//! pgwarden relays authentication (DESIGN.md): Postgres decides who logs in,
//! and the proxy never holds what would let it check a client itself. So it
//! hands a client a connection another client opened only when Postgres
//! admitted that login without asking the client for anything (trust, or
//! `cert`/`ident` of the proxy's own connection): any client sending the same
//! startup packet through the proxy would be admitted the same way on a new
//! connection, so reuse changes nothing Postgres decides. A login that
//! answered a challenge (password, md5, SCRAM) is never kept.
//!
//! A connection is kept when its client sent Terminate with no statement
//! running and no transaction open. `DISCARD ALL` (PgBouncer's
//! `server_reset_query`) then resets it: settings back to the startup
//! packet's, prepared statements, portals, temporary tables, advisory locks,
//! LISTENs and `SET ROLE` gone. Connections are kept by their whole startup
//! packet (user, database and every parameter, which are what `RESET ALL`
//! returns to), the next client with the same packet is sent Postgres' own
//! ParameterStatus values as they stand after the reset, and a key of the
//! proxy's own for cancelling. Closed (with Terminate): a kept connection
//! unused for `reuse_idle_timeout`, one older than `reuse_lifetime`, one that
//! Postgres closed or spoke on while idle, all of them at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use tokio::io::AsyncWriteExt;

use super::{UpstreamRead, UpstreamWrite};
use crate::cancel::UpstreamKey;
use crate::protocol::{self, Fill, Framer};

/// How long `DISCARD ALL` may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed to send a closing connection its Terminate.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A server connection between clients.
pub struct Kept {
    pub rd: UpstreamRead,
    pub wr: UpstreamWrite,
    /// What was read from Postgres and not yet handled.
    pub framer: Framer,
    pub login: Login,
}

/// What a reusable login's next client must be told, and when it expires.
pub struct Login {
    /// The startup packet it was opened with: the key it is kept under.
    pub startup: Bytes,
    /// ParameterStatus messages, whole, in the order Postgres first sent them.
    pub params: Vec<Bytes>,
    /// NegotiateProtocolVersion, whole, when Postgres sent one: it answers
    /// the startup packet, so every client of the connection is sent it.
    pub negotiated: Option<Bytes>,
    /// Postgres' cancel key for it.
    pub key: UpstreamKey,
    pub opened: Instant,
}

impl Login {
    /// Replaces the ParameterStatus of the same name, or adds `frame`.
    fn set_param(&mut self, frame: Bytes) {
        let name = |f: &[u8]| {
            let body = f.get(5..).unwrap_or_default();
            body.iter().position(|&b| b == 0).map(|end| body[..end].to_vec())
        };
        let new = name(&frame);
        match self.params.iter_mut().find(|p| name(p) == new) {
            Some(p) => *p = frame,
            None => self.params.push(frame),
        }
    }

    /// NegotiateProtocolVersion if there was one, AuthenticationOk, the
    /// parameters, `key_data` and ReadyForQuery (idle): what a client of a
    /// kept connection is sent in place of its login.
    pub fn greeting(&self, key_data: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        if let Some(v) = &self.negotiated {
            out.extend_from_slice(v);
        }
        out.extend_from_slice(&protocol::frame(b'R', &0u32.to_be_bytes()));
        for p in &self.params {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(key_data);
        out.extend_from_slice(&protocol::frame(b'Z', b"I"));
        out
    }
}

struct Idle {
    conn: Kept,
    since: Instant,
}

/// The kept connections.
pub struct Reuse {
    max_idle: usize,
    idle_timeout: Duration,
    lifetime: Duration,
    idle: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// By startup packet, the most recently kept last.
    lists: HashMap<Bytes, Vec<Idle>>,
    /// Connections in `lists`.
    count: usize,
    /// Shutting down: nothing more is kept.
    closed: bool,
}

impl Pool {
    /// Takes out every connection `stale` says so of.
    fn remove_if(&mut self, mut stale: impl FnMut(&Idle) -> bool) -> Vec<Kept> {
        let mut out = vec![];
        for list in self.lists.values_mut() {
            let (old, fresh): (Vec<Idle>, Vec<Idle>) = list.drain(..).partition(&mut stale);
            *list = fresh;
            out.extend(old.into_iter().map(|i| i.conn));
        }
        self.lists.retain(|_, list| !list.is_empty());
        self.count -= out.len();
        out
    }
}

impl Reuse {
    /// `None` when `upstream.reuse_idle` is 0.
    pub fn new(c: &pgwarden_config::Upstream) -> Option<Self> {
        (c.reuse_idle > 0).then(|| Self {
            max_idle: c.reuse_idle as usize,
            idle_timeout: c.reuse_idle_timeout.get(),
            lifetime: c.reuse_lifetime.get(),
            idle: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, idle: &Idle, now: Instant) -> bool {
        now.duration_since(idle.since) >= self.idle_timeout
            || now.duration_since(idle.conn.login.opened) >= self.lifetime
    }

    /// A kept connection for `startup`, the most recently kept first. Ones
    /// that expired, or that Postgres closed or sent anything on while idle
    /// (a termination's FATAL, a late notice), are closed instead.
    pub async fn take(&self, startup: &[u8]) -> Option<Kept> {
        loop {
            let idle = {
                let mut pool = self.lock();
                let list = pool.lists.get_mut(startup)?;
                let idle = list.pop();
                if list.is_empty() {
                    pool.lists.remove(startup);
                }
                let idle = idle?;
                pool.count -= 1;
                idle
            };
            let expired = self.expired(&idle, Instant::now());
            let mut conn = idle.conn;
            // Idle means silent: anything buffered or readable now is not
            // for the next client.
            let silent =
                conn.framer.is_empty() && conn.framer.fill(&mut conn.rd).now_or_never().is_none();
            if silent && !expired {
                return Some(conn);
            }
            close(conn).await;
        }
    }

    /// Resets `conn` with `DISCARD ALL` and keeps it, or closes it when it
    /// cannot be kept (too old, the reset failed, `reuse_idle` kept already,
    /// shutting down).
    pub async fn keep(&self, mut conn: Kept) {
        if conn.login.opened.elapsed() >= self.lifetime {
            return close(conn).await;
        }
        if !matches!(tokio::time::timeout(RESET_TIMEOUT, reset(&mut conn)).await, Ok(true)) {
            return close(conn).await;
        }
        let refused = {
            let mut pool = self.lock();
            if pool.closed || pool.count >= self.max_idle {
                Some(conn)
            } else {
                pool.count += 1;
                let key = conn.login.startup.clone();
                pool.lists.entry(key).or_default().push(Idle { conn, since: Instant::now() });
                None
            }
        };
        if let Some(conn) = refused {
            close(conn).await;
        }
    }

    /// Closes the expired connections; run every second by the listener.
    pub async fn sweep(&self) {
        let now = Instant::now();
        let stale = self.lock().remove_if(|i| self.expired(i, now));
        for conn in stale {
            close(conn).await;
        }
    }

    /// Closes every kept connection and keeps no more: shutdown.
    pub async fn close_all(&self) {
        let all = {
            let mut pool = self.lock();
            pool.closed = true;
            pool.remove_if(|_| true)
        };
        for conn in all {
            close(conn).await;
        }
    }

    /// Connections kept now.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `DISCARD ALL`, read to its ReadyForQuery: true when it succeeded and the
/// connection is idle outside a transaction. ParameterStatus messages it
/// brings (settings returning to their startup values) update the login's.
async fn reset(conn: &mut Kept) -> bool {
    let mut query = BytesMut::new();
    query.extend_from_slice(&protocol::frame(b'Q', b"DISCARD ALL\0"));
    if conn.wr.write_all(&query).await.is_err() {
        return false;
    }
    let mut ok = false;
    loop {
        match conn.framer.fill(&mut conn.rd).await {
            Ok(Ok(Fill::Ready)) => {}
            _ => return false,
        }
        while let Ok(Some(msg)) = conn.framer.next_message() {
            match msg.tag {
                b'C' => ok = msg.body().starts_with(b"DISCARD ALL\0"),
                b'S' => conn.login.set_param(msg.frame),
                b'Z' => return ok && msg.body() == b"I" && conn.framer.is_empty(),
                // A notice or a late notification is dropped; an error fails.
                b'N' | b'A' => {}
                _ => return false,
            }
        }
    }
}

/// Sends Terminate and drops the connection.
pub async fn close(mut conn: Kept) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = conn.wr.write_all(&protocol::terminate()).await;
        let _ = conn.wr.shutdown().await;
    })
    .await;
}
