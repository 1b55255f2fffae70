//! Cancel keys. Each client is given the proxy's own BackendKeyData; a
//! CancelRequest carrying it is mapped to the key Postgres gave the proxy's
//! upstream connection, and sent on. Clients never learn upstream keys, and a
//! key guessed for one session cannot cancel another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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

struct Entry {
    secret: [u8; 4],
    upstream: UpstreamKey,
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
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map.lock().remove(&self.pid);
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
        map.insert(pid, Entry { secret, upstream: upstream.clone() });
        drop(map);
        let reg = Registration { map: self.clone(), pid, upstream };
        (pid, i32::from_be_bytes(secret), reg)
    }

    /// The upstream key for a client's (pid, secret), compared in constant time.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<UpstreamKey> {
        let map = self.lock();
        let entry = map.get(&pid)?;
        bool::from(entry.secret.ct_eq(&secret.to_be_bytes())).then(|| entry.upstream.clone())
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
        assert_eq!(map.lookup(pid, secret).unwrap().pid, 77);
        assert!(map.lookup(pid, secret.wrapping_add(1)).is_none(), "wrong secret accepted");
        drop(reg);
        assert!(map.lookup(pid, secret).is_none());
        drop(other_reg);
        assert!(map.is_empty());
    }
}
