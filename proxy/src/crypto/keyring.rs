//! Keys: the master key, data keys, and the [`Keyring`] of ciphers built from
//! the rows of `pgwarden.encryption_keys`.
//!
//! # Key status
//! | status | decrypts | chosen for new writes |
//! |---|---|---|
//! | ACTIVE | yes | the newest ACTIVE version of its name |
//! | ROTATING | yes | no (being replaced; re-encryption in progress) |
//! | DEPRECATED | yes | no |
//! | REVOKED | no: not even unwrapped; its values fail with a clear error | no |

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

mod keys;
#[cfg(test)]
mod tests;

pub use keys::{DataKey, MasterKey, KEY_LEN, WRAPPED_LEN};

use super::cipher::{open_error, ColumnCipher};
use super::envelope;
use super::error::{CryptoError, KeyError};

/// A data key's lifecycle state (`key_status` in `pgwarden.encryption_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    Active,
    Rotating,
    Deprecated,
    Revoked,
}

impl KeyStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "ACTIVE",
            KeyStatus::Rotating => "ROTATING",
            KeyStatus::Deprecated => "DEPRECATED",
            KeyStatus::Revoked => "REVOKED",
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyStatus {
    type Err = KeyError;

    /// Case-insensitive, as the column may have been written by hand.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [KeyStatus::Active, KeyStatus::Rotating, KeyStatus::Deprecated, KeyStatus::Revoked]
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or(KeyError::UnknownStatus)
    }
}

/// One row of `pgwarden.encryption_keys`, as far as the keyring needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Written into envelopes; what readers look keys up by.
    pub id: u32,
    pub name: String,
    pub version: u32,
    pub status: KeyStatus,
    /// The data key wrapped by the master key ([`DataKey::wrap`]).
    pub wrapped: Vec<u8>,
    /// The fingerprint recorded when the key was created, checked on load when
    /// present so that a swapped key row is noticed.
    pub fingerprint: Option<String>,
}

impl fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("status", &self.status)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// What the keyring knows about a key, for `pgwarden keys list` and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u32,
    pub name: String,
    pub version: u32,
    pub status: KeyStatus,
    /// Computed from the key when it was loaded; the recorded one for REVOKED
    /// keys, which are never unwrapped.
    pub fingerprint: Option<String>,
}

/// Every usable data key as a shared [`ColumnCipher`], by id and by name.
/// Immutable: a key reload builds a new keyring and swaps it in.
#[derive(Default)]
pub struct Keyring {
    /// Every loaded cipher, sorted by key id: found by binary search on every
    /// value read, which is cheaper than hashing the id.
    ciphers: Vec<Arc<ColumnCipher>>,
    /// Revoked ids, kept so that their values fail with a message naming the key.
    revoked: HashMap<u32, (String, u32)>,
    /// Newest ACTIVE version per name: what writes use.
    active: HashMap<String, Arc<ColumnCipher>>,
    /// Every loaded version per name, newest first: what a deterministic
    /// equality must match while a column holds several versions.
    readable: HashMap<String, Vec<Arc<ColumnCipher>>>,
    keys: Vec<KeyInfo>,
}

impl Keyring {
    /// Unwraps every non-REVOKED row with `master` and builds its cipher. Fails
    /// as a whole on the first key that does not unwrap (a wrong master key
    /// should stop the proxy, not half-load it), on a fingerprint mismatch and
    /// on duplicate ids or (name, version) pairs.
    pub fn load(
        master: &MasterKey,
        rows: impl IntoIterator<Item = KeyRow>,
    ) -> Result<Self, KeyError> {
        let mut ring = Keyring::default();
        let mut versions: HashSet<(String, u32)> = HashSet::new();
        let mut rows: Vec<KeyRow> = rows.into_iter().collect();
        // Newest first, so that `readable` and `active` fall out in order.
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(b.version.cmp(&a.version)));
        for row in rows {
            if ring.ciphers.iter().any(|c| c.key_id() == row.id)
                || ring.revoked.contains_key(&row.id)
            {
                return Err(KeyError::DuplicateId { id: row.id });
            }
            if !versions.insert((row.name.clone(), row.version)) {
                return Err(KeyError::DuplicateVersion { name: row.name, version: row.version });
            }
            let mut info = KeyInfo {
                id: row.id,
                name: row.name,
                version: row.version,
                status: row.status,
                fingerprint: row.fingerprint,
            };
            if row.status == KeyStatus::Revoked {
                ring.revoked.insert(info.id, (info.name.clone(), info.version));
                ring.keys.push(info);
                continue;
            }
            let key = DataKey::unwrap(master, &info.name, info.version, &row.wrapped)?;
            let fingerprint = key.fingerprint();
            if info.fingerprint.as_ref().is_some_and(|recorded| *recorded != fingerprint) {
                return Err(KeyError::FingerprintMismatch {
                    name: info.name,
                    version: info.version,
                });
            }
            info.fingerprint = Some(fingerprint);
            let cipher = Arc::new(ColumnCipher::new(info.id, &key));
            ring.ciphers.push(Arc::clone(&cipher));
            ring.readable.entry(info.name.clone()).or_default().push(Arc::clone(&cipher));
            if info.status == KeyStatus::Active && !ring.active.contains_key(&info.name) {
                ring.active.insert(info.name.clone(), cipher);
            }
            ring.keys.push(info);
        }
        ring.ciphers.sort_by_key(|c| c.key_id());
        Ok(ring)
    }

    /// The cipher for the key id found in an envelope.
    pub fn cipher(&self, id: u32) -> Result<&Arc<ColumnCipher>, CryptoError> {
        if let Ok(at) = self.ciphers.binary_search_by_key(&id, |c| c.key_id()) {
            return Ok(&self.ciphers[at]);
        }
        Err(match self.revoked.get(&id) {
            Some((name, version)) => {
                CryptoError::RevokedKey { id, name: name.clone(), version: *version }
            }
            None => CryptoError::UnknownKey { id },
        })
    }

    /// The cipher new values of key `name` are encrypted with: its newest
    /// ACTIVE version.
    pub fn active(&self, name: &str) -> Result<&Arc<ColumnCipher>, CryptoError> {
        self.active.get(name).ok_or_else(|| CryptoError::NoActiveKey { name: name.to_string() })
    }

    /// Every loaded (non-REVOKED) version of key `name`, newest first; empty
    /// for an unknown name.
    pub fn readable(&self, name: &str) -> &[Arc<ColumnCipher>] {
        self.readable.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// Opens `envelope` with whichever loaded key sealed it (see
    /// [`ColumnCipher::decrypt`]).
    pub fn decrypt(
        &self,
        aad: &[u8],
        envelope: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        out.clear();
        let id = envelope::key_id(envelope).map_err(open_error)?;
        self.cipher(id)?.decrypt(aad, envelope, out)
    }

    /// Every key row seen, loaded or REVOKED, by name then newest version first.
    pub fn keys(&self) -> &[KeyInfo] {
        &self.keys
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("keys", &self.keys).finish_non_exhaustive()
    }
}
