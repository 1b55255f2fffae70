//! [`ColumnCipher`]: one per data key, its key schedules computed once, shared by
//! every session through an `Arc`.
//!
//! # Keys and nonces
//! A data key `K` is never used directly as an AES key. Each mode gets its own
//! key, so no AES key ever serves two algorithms:
//!
//! - randomized (AES-256-GCM): key `HMAC-SHA256(K, "pgwarden v1 randomized key")`,
//!   nonce 96 random bits per value, from the thread's CSPRNG (`rand`'s
//!   `ThreadRng`: ChaCha12 seeded and periodically reseeded from the OS),
//!   not a `getrandom` system call per value, which cost more than the
//!   AEAD itself for short values;
//! - deterministic (AES-256-GCM-SIV): key
//!   `HMAC-SHA256(K, "pgwarden v1 deterministic key")`, nonce
//!   `HMAC-SHA256(K, "pgwarden deterministic nonce")[..12]`, fixed per key.
//!   AES-GCM-SIV stays secure with a repeated nonce (it reveals only equality,
//!   which is the point), so equal plaintexts in the same column under the same
//!   key give byte-equal envelopes.
//!
//! These derivations are part of the ciphertext format: anything else that opens
//! pgwarden envelopes must apply them.

use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, AES_256_GCM_SIV};
use hmac::digest::FixedOutput;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::{self, Envelope, EnvelopeError, Mode, HEADER_LEN, NONCE_LEN, TAG_LEN};
use super::error::CryptoError;
use super::keyring::DataKey;

const RANDOMIZED_KEY_LABEL: &[u8] = b"pgwarden v1 randomized key";
const DETERMINISTIC_KEY_LABEL: &[u8] = b"pgwarden v1 deterministic key";
const DETERMINISTIC_NONCE_LABEL: &[u8] = b"pgwarden deterministic nonce";
const MASK_HASH_LABEL: &[u8] = b"pgwarden v1 mask hash key";

/// Encrypts and decrypts column values under one data key, in either mode.
/// `Send + Sync`. The AEADs are aws-lc-rs's (AWS-LC, the library behind
/// rustls's default provider): for the short values columns hold it is 2–5×
/// faster than RustCrypto's (bench/README.md, Crypto). AWS-LC cleanses its key
/// schedules when they are freed.
pub struct ColumnCipher {
    /// Written into every envelope so that readers find this key again.
    key_id: u32,
    randomized: LessSafeKey,
    deterministic: LessSafeKey,
    /// The deterministic mode's nonce: fixed per key, derived once.
    deterministic_nonce: [u8; NONCE_LEN],
    /// The `hash` mask's HMAC, keyed once with
    /// `HMAC-SHA256(K, "pgwarden v1 mask hash key")`: masked values join and
    /// group, and reveal nothing without the key.
    mask_hash: Hmac<Sha256>,
}

impl ColumnCipher {
    /// Computes both key schedules and the deterministic nonce for `key`.
    pub fn new(key_id: u32, key: &DataKey) -> Self {
        let randomized_key = derive(key.expose(), RANDOMIZED_KEY_LABEL);
        let deterministic_key = derive(key.expose(), DETERMINISTIC_KEY_LABEL);
        let nonce = derive(key.expose(), DETERMINISTIC_NONCE_LABEL);
        let mut mask_key = Zeroizing::new([0u8; 64]);
        mask_key[..32].copy_from_slice(&*derive(key.expose(), MASK_HASH_LABEL));
        let mut deterministic_nonce = [0u8; NONCE_LEN];
        deterministic_nonce.copy_from_slice(&nonce[..NONCE_LEN]);
        Self {
            key_id,
            randomized: aead_key(&AES_256_GCM, &randomized_key),
            deterministic: aead_key(&AES_256_GCM_SIV, &deterministic_key),
            deterministic_nonce,
            mask_hash: <Hmac<Sha256> as KeyInit>::new(&(*mask_key).into()),
        }
    }

    /// The `hash` mask of a value's text: HMAC-SHA256 under this key's mask
    /// key, the same for the same text.
    pub fn mask_hash(&self, text: &[u8]) -> [u8; 32] {
        let mut mac = self.mask_hash.clone();
        mac.update(text);
        let mut out = [0u8; 32];
        mac.finalize_into((&mut out).into());
        out
    }

    /// The AEAD key of `mode`.
    fn aead(&self, mode: Mode) -> &LessSafeKey {
        match mode {
            Mode::Randomized => &self.randomized,
            Mode::Deterministic => &self.deterministic,
        }
    }

    /// The data-key id this cipher writes into envelopes.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Appends the envelope of `plaintext` (a value's canonical form) for the
    /// column whose AAD is `aad` ([`envelope::column_aad`]) to `out`.
    pub fn encrypt(
        &self,
        mode: Mode,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let nonce = match mode {
            Mode::Randomized => {
                let mut nonce = [0u8; NONCE_LEN];
                rand::thread_rng().fill_bytes(&mut nonce);
                nonce
            }
            Mode::Deterministic => self.deterministic_nonce,
        };
        let start = out.len();
        out.reserve(envelope::OVERHEAD + plaintext.len());
        envelope::write_header(out, mode, self.key_id, &nonce);
        out.extend_from_slice(plaintext);
        let body = &mut out[start + HEADER_LEN..];
        match self.aead(mode).seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            body,
        ) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(CryptoError::TooLarge { len: plaintext.len() })
            }
        }
    }

    /// Opens `envelope` for the column whose AAD is `aad` into `out`, which is
    /// cleared first. With enough capacity in `out` nothing is allocated: the
    /// ciphertext is copied into `out` and decrypted in place.
    ///
    /// Tampering, truncation, another column's AAD, or an envelope of another
    /// key all give [`CryptoError::Authentication`]; `out` is then left empty.
    pub fn decrypt(
        &self,
        aad: &[u8],
        envelope: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        out.clear();
        let envelope = Envelope::parse(envelope).map_err(open_error)?;
        if envelope.key_id != self.key_id {
            return Err(CryptoError::Authentication);
        }
        // The envelope ends with ciphertext‖tag, which aws-lc opens in place.
        out.extend_from_slice(envelope.ciphertext);
        out.extend_from_slice(envelope.tag);
        let nonce = Nonce::assume_unique_for_key(*envelope.nonce);
        if self
            .aead(envelope.mode)
            .open_in_place(nonce, Aad::from(aad), out.as_mut_slice())
            .is_err()
        {
            // aws-lc leaves no unauthenticated plaintext behind; clear the
            // buffer all the same.
            out.fill(0);
            out.clear();
            return Err(CryptoError::Authentication);
        }
        out.truncate(out.len() - TAG_LEN);
        Ok(())
    }
}

impl fmt::Debug for ColumnCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnCipher").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// How a failed header parse is reported by `decrypt`: damage (truncation, wrong
/// magic) is an authentication failure; a newer format is named as such.
pub(super) fn open_error(e: EnvelopeError) -> CryptoError {
    match e {
        EnvelopeError::TooShort { .. } | EnvelopeError::BadMagic => CryptoError::Authentication,
        EnvelopeError::UnsupportedVersion(_) | EnvelopeError::UnknownAlgorithm(_) => {
            CryptoError::Unsupported(e)
        }
    }
}

/// An aws-lc AEAD key: both algorithms take the 32 bytes [`derive`] gives.
pub(crate) fn aead_key(
    algorithm: &'static aws_lc_rs::aead::Algorithm,
    key: &[u8; 32],
) -> LessSafeKey {
    match UnboundKey::new(algorithm, key) {
        Ok(key) => LessSafeKey::new(key),
        // Only a key of the wrong length is refused, and this one is 32 bytes.
        Err(_) => unreachable!("AES-256 takes a 32-byte key"),
    }
}

/// `HMAC-SHA256(key, label)`, zeroized on drop.
fn derive(key: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC pads a key shorter than the hash's block with zeros; doing it here
    // gives the same MAC through the constructor that cannot fail.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&(*block).into());
    mac.update(label);
    let mut out = Zeroizing::new([0u8; 32]);
    mac.finalize_into((&mut *out).into());
    out
}
