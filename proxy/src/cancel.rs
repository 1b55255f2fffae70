//! Cancel keys. Each client is given the proxy's own BackendKeyData; a
//! CancelRequest carrying it is mapped to the key Postgres gave the proxy's
//! upstream connection, and sent on. Clients never learn upstream keys, and a
//! key guessed for one session cannot cancel another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use subtle::ConstantTimeEq;

/// The upstream side of a cancel key.
#[derive(Debug, Clone)]
pub struct UpstreamKey {
    pub addr: SocketAddr,
    pub pid: i32,
    /// Postgres' secret: 4 bytes in protocol 3.0, longer in 3.2.
    pub secret: Vec<u8>,
    /// How the session reached Postgres over TLS; `None` when in plaintext.
    /// Its cancel goes the same way, so the secret never crosses the network
    /// in the clear when the session did not.
    pub tls: Option<crate::upstream::tls::UpstreamTlsSetup>,
}

/// How long sending a CancelRequest on to Postgres may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

struct Entry {
    secret: [u8; 4],
    upstream: UpstreamKey,
    forwards: Arc<Forwards>,
}

/// The cancels a key has sent on: how many are on the way, and whether one
/// ended without Postgres confirming it read it (it may still act on it).
#[derive(Default)]
struct Forwards {
    sending: AtomicUsize,
    uncertain: AtomicBool,
}

/// Live sessions' cancel keys, by the process id the proxy gave the client.
#[derive(Default, Clone)]
pub struct CancelMap {
    inner: Arc<Mutex<HashMap<i32, Entry>>>,
}

/// Removes its key from the map when the session ends.
pub struct Registration {
    map: CancelMap,
    pid: i32,
    /// The session's own upstream key, to cancel what it leaves running.
    pub upstream: UpstreamKey,
    forwards: Arc<Forwards>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map.lock().remove(&self.pid);
    }
}

impl Registration {
    /// Removes the key, then waits up to `timeout` for the cancels already
    /// looked up by it to be sent on. True when, after it, nothing the
    /// session's client sent can cancel a statement on its server
    /// connection, which can then serve another client: every cancel it
    /// sent was read by Postgres (which signals an idle backend, to no
    /// effect); false when one is still on the way or ended unconfirmed.
    pub async fn retire(self, timeout: Duration) -> bool {
        let forwards = self.forwards.clone();
        drop(self);
        let deadline = tokio::time::Instant::now() + timeout;
        while forwards.sending.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        !forwards.uncertain.load(Ordering::Acquire)
    }
}

/// A CancelRequest on its way to Postgres, counted against its session's
/// key until dropped; unconfirmed unless [`Forward::delivered`] said so.
pub struct Forward {
    pub upstream: UpstreamKey,
    forwards: Arc<Forwards>,
    delivered: bool,
}

impl Forward {
    /// Postgres read the request (it closed the connection after it).
    pub fn delivered(mut self) {
        self.delivered = true;
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        if !self.delivered {
            // Failed, timed out or abandoned part-way: Postgres may yet read it.
            self.forwards.uncertain.store(true, Ordering::Release);
        }
        self.forwards.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CancelMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a session its client-facing (pid, secret) for `upstream`. The pid
    /// is Postgres' own when free, so that `pg_backend_pid()` and the sender of
    /// a notification match what the client was told (clients use that to
    /// ignore their own notifications); the secret is always the proxy's own.
    pub fn register(&self, upstream: UpstreamKey) -> (i32, i32, Registration) {
        let secret: [u8; 4] = rand::random();
        let mut map = self.lock();
        let mut pid = upstream.pid;
        while pid <= 0 || map.contains_key(&pid) {
            // Taken (a second upstream server reusing a pid): pick another,
            // positive like a real process id.
            pid = (rand::random::<u32>() >> 1) as i32;
        }
        let forwards = Arc::new(Forwards::default());
        map.insert(pid, Entry { secret, upstream: upstream.clone(), forwards: forwards.clone() });
        drop(map);
        let reg = Registration { map: self.clone(), pid, upstream, forwards };
        (pid, i32::from_be_bytes(secret), reg)
    }

    /// The upstream key for a client's (pid, secret), compared in constant
    /// time, counted as being sent until the [`Forward`] is dropped.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Forward> {
        let map = self.lock();
        let entry = map.get(&pid)?;
        bool::from(entry.secret.ct_eq(&secret.to_be_bytes())).then(|| {
            entry.forwards.sending.fetch_add(1, Ordering::AcqRel);
            let forwards = entry.forwards.clone();
            Forward { upstream: entry.upstream.clone(), forwards, delivered: false }
        })
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> UpstreamKey {
        let addr = "127.0.0.1:5432".parse().unwrap();
        UpstreamKey { addr, pid: 77, secret: vec![1, 2, 3, 4], tls: None }
    }

    #[test]
    fn a_registered_key_maps_to_its_upstream_key_until_the_session_ends() {
        let map = CancelMap::default();
        let (pid, secret, reg) = map.register(key());
        assert_eq!(pid, 77, "the upstream pid is kept when free");
        let (other, _, other_reg) = map.register(key());
        assert!(other > 0 && other != 77, "a taken pid is replaced");
        assert_eq!(map.lookup(pid, secret).unwrap().upstream.pid, 77);
        assert!(map.lookup(pid, secret.wrapping_add(1)).is_none(), "wrong secret accepted");
        drop(reg);
        assert!(map.lookup(pid, secret).is_none());
        drop(other_reg);
        assert!(map.is_empty());
    }

    #[tokio::test]
    async fn a_retired_key_is_gone_at_once_and_its_cancels_in_flight_are_awaited() {
        let map = CancelMap::default();
        let (pid, secret, reg) = map.register(key());
        let sending = map.lookup(pid, secret).unwrap();
        let retiring = tokio::spawn(reg.retire(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(map.lookup(pid, secret).is_none(), "a retiring key still maps");
        assert!(!retiring.is_finished(), "retired with a cancel still being sent");
        sending.delivered();
        assert!(retiring.await.unwrap());

        let (pid, secret, reg) = map.register(key());
        let _stuck = map.lookup(pid, secret).unwrap();
        assert!(!reg.retire(Duration::from_millis(20)).await, "a stuck cancel was not noticed");

        // One that failed or timed out may still reach Postgres: not clean.
        let (pid, secret, reg) = map.register(key());
        map.lookup(pid, secret).unwrap().delivered();
        drop(map.lookup(pid, secret).unwrap());
        assert!(!reg.retire(Duration::from_secs(5)).await, "an unconfirmed cancel was not noticed");
    }
}
