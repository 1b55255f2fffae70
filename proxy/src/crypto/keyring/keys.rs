//! The two kinds of key: the master key (key-encryption key, from the
//! configuration) and data keys (random, one per key name and version, stored
//! wrapped by the master key).
//!
//! Both hold their bytes in `Zeroizing` memory, print `[redacted]` in `Debug`,
//! and never appear in an error message.

use std::fmt;
use std::fs::File;
use std::io::Read;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, AES_256_GCM};
use base64::Engine;
use pgwarden_config::{Secret, SecretString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::envelope::{NONCE_LEN, TAG_LEN};
use crate::crypto::error::KeyError;

/// Bytes of a master key and of a data key: AES-256.
pub const KEY_LEN: usize = 32;
/// Bytes of a wrapped data key: nonce ‖ encrypted key ‖ tag.
pub const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
/// A master key file larger than this is not a master key (and is not read).
const MAX_KEY_FILE: u64 = 4096;
/// Longest base64 text decoded; longer text is reported as the wrong length.
const MAX_KEY_TEXT: usize = 128;

/// The key-encryption key: 256 bits, written as base64 (`openssl rand -base64
/// 32`). It only wraps and unwraps data keys.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// Loads the master key from `keys.master_key`. A `file:` key must be mode
    /// 0600 or stricter: a key readable by group or others is refused with the
    /// `chmod` that fixes it.
    pub fn load(secret: &Secret) -> Result<Self, KeyError> {
        match secret {
            Secret::File(path) => Self::from_base64(&read_key_file(path)?),
            other => {
                let text = other.resolve().map_err(KeyError::Read)?;
                Self::from_base64(text.expose())
            }
        }
    }

    /// Decodes base64 text (surrounding whitespace ignored) holding exactly 32
    /// bytes. Errors never echo the text.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::MasterKeyLength { len: text.len() / 4 * 3 });
        }
        let mut buf = Zeroizing::new([0u8; MAX_KEY_TEXT]);
        let len = base64::engine::general_purpose::STANDARD
            .decode_slice(text, &mut buf[..])
            .map_err(|_| KeyError::MasterKeyEncoding)?;
        let bytes = buf.get(..len).unwrap_or_default();
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(KeyError::MasterKeyLength { len });
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random master key (for `pgwarden demo` and `keys init`).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        Self(key)
    }

    /// The key as base64 text, the form `load` reads.
    pub fn to_base64(&self) -> SecretString {
        SecretString::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }

    /// Identifies the key without revealing it, so replicas can be checked to
    /// share one master key.
    pub fn fingerprint(&self) -> String {
        fingerprint(b"pgwarden master key fingerprint v1", &self.0)
    }

    fn aead(&self) -> LessSafeKey {
        crate::crypto::cipher::aead_key(&AES_256_GCM, &self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A data key: 256 random bits that encrypt column values, stored only wrapped.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// A new random data key from the OS.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Encrypts this key under `master` for storage as key `name` version
    /// `version`: AES-256-GCM, random nonce, AAD binding name and version;
    /// returns nonce ‖ ciphertext ‖ tag ([`WRAPPED_LEN`] bytes).
    pub fn wrap(&self, master: &MasterKey, name: &str, version: u32) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&self.0[..]);
        let tag = master
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(name, version)),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| KeyError::Wrap { name: name.to_string(), version })?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a key wrapped by [`DataKey::wrap`] under the same name and version.
    /// Any mismatch (another master key, name or version, altered bytes) fails
    /// with "wrong master key or corrupted key NAME vVERSION".
    pub fn unwrap(
        master: &MasterKey,
        name: &str,
        version: u32,
        wrapped: &[u8],
    ) -> Result<Self, KeyError> {
        let failed = || KeyError::Unwrap { name: name.to_string(), version };
        let (nonce, rest) = wrapped.split_first_chunk::<NONCE_LEN>().ok_or_else(failed)?;
        let (sealed, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or_else(failed)?;
        if sealed.len() != KEY_LEN {
            return Err(failed());
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        master
            .aead()
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(wrap_aad(name, version)),
                sealed,
                tag,
                &mut key[..],
            )
            .map_err(|_| failed())?;
        Ok(Self(key))
    }

    /// Identifies the key without revealing it: hex of the first 8 bytes of
    /// SHA-256 over a domain-separating label and the key.
    pub fn fingerprint(&self) -> String {
        fingerprint(b"pgwarden data key fingerprint v1", &self.0)
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// AAD of a wrapped key: a label, the name's length (u32 BE), the name, the
/// version (u32 BE). The length prefix keeps ("a1", 2) and ("a", 12) apart.
fn wrap_aad(name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 4 + name.len() + 4);
    aad.extend_from_slice(b"pgwarden:key:v1:");
    aad.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn fingerprint(label: &[u8], key: &[u8; KEY_LEN]) -> String {
    let digest = Sha256::new().chain_update(label).chain_update([0u8]).chain_update(key).finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Reads a master key file after checking that only its owner can access it.
/// The mode is checked on the opened file, so the file checked is the one read.
fn read_key_file(path: &str) -> Result<Zeroizing<String>, KeyError> {
    let read_error = |e: std::io::Error| KeyError::Read(format!("cannot read file {path}: {e}"));
    let file = File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecureKeyFile { path: path.to_string(), mode });
        }
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::Read(format!(
            "file {path} is {} bytes, too large to hold a base64 master key",
            meta.len()
        )));
    }
    // Sized up front so that reading never reallocates and leaves a copy behind.
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE as usize + 1));
    file.take(MAX_KEY_FILE).read_to_string(&mut text).map_err(read_error)?;
    if text.trim().is_empty() {
        return Err(KeyError::Read(format!("file {path} is empty")));
    }
    Ok(text)
}
