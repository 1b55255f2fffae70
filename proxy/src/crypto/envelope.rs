//! The ciphertext envelope stored in an encrypted (`bytea`) column, exactly as
//! DESIGN.md fixes it:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | magic `0x50 0x57` ("PW") |
//! | 2 | 1 | format version, `1` |
//! | 3 | 1 | algorithm: `1` AES-256-GCM (randomized), `2` AES-256-GCM-SIV (deterministic) |
//! | 4 | 4 | data-key id, u32 big-endian |
//! | 8 | 12 | nonce |
//! | 20 | n | ciphertext |
//! | 20+n | 16 | tag |
//!
//! The additional authenticated data is the column's name ([`column_aad`]), so a
//! value copied into another column no longer decrypts. The header itself is not
//! part of the AAD, but changing any header byte still fails: the key id picks
//! the key, the algorithm picks the AEAD and the nonce feeds it.
//!
//! Parsing never panics: every length is checked, and whatever is wrong comes
//! back as an [`EnvelopeError`].

use std::fmt;

/// The first two bytes of every envelope: "PW".
pub const MAGIC: [u8; 2] = *b"PW";
/// The only envelope format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of the nonce (96 bits, what both AEADs take).
pub const NONCE_LEN: usize = 12;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes before the ciphertext: magic, version, algorithm, key id, nonce.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 4 + NONCE_LEN;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// How a column is encrypted; written as the envelope's algorithm byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// AES-256-GCM with a random nonce: equal values give unrelated envelopes,
    /// so nothing can be searched. Algorithm byte `1`.
    Randomized,
    /// AES-256-GCM-SIV with a nonce fixed per key: equal values (in the same
    /// column, under the same key) give equal envelopes, so `=`, `IN`, joins,
    /// GROUP BY and unique indexes work. Algorithm byte `2`.
    Deterministic,
}

impl Mode {
    /// The envelope's algorithm byte for this mode.
    pub const fn algorithm_byte(self) -> u8 {
        match self {
            Mode::Randomized => 1,
            Mode::Deterministic => 2,
        }
    }

    /// The mode an algorithm byte stands for, if any.
    pub const fn from_algorithm_byte(byte: u8) -> Option<Mode> {
        match byte {
            1 => Some(Mode::Randomized),
            2 => Some(Mode::Deterministic),
            _ => None,
        }
    }

    /// The name used in the configuration (`mode = "deterministic"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Randomized => "randomized",
            Mode::Deterministic => "deterministic",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<pgwarden_config::ColumnMode> for Mode {
    fn from(mode: pgwarden_config::ColumnMode) -> Self {
        match mode {
            pgwarden_config::ColumnMode::Randomized => Mode::Randomized,
            pgwarden_config::ColumnMode::Deterministic => Mode::Deterministic,
        }
    }
}

/// Why bytes are not an envelope this build can open. Carries lengths and header
/// bytes only, never content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header and a tag: truncated, or not an envelope at all.
    #[error("value of {len} bytes is too short to be a pgwarden envelope (at least {OVERHEAD})")]
    TooShort { len: usize },
    /// Does not start with "PW": not written by pgwarden.
    #[error("value is not a pgwarden envelope (wrong magic bytes)")]
    BadMagic,
    /// Written by a newer (or corrupted) pgwarden.
    #[error("envelope format version {0} is not supported by this pgwarden (supports {VERSION})")]
    UnsupportedVersion(u8),
    /// An algorithm byte this build does not know.
    #[error("envelope algorithm {0} is not supported (1 = AES-256-GCM, 2 = AES-256-GCM-SIV)")]
    UnknownAlgorithm(u8),
}

/// A parsed envelope, borrowing the bytes it was read from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub mode: Mode,
    /// Which data key (a row of `pgwarden.encryption_keys`) sealed it.
    pub key_id: u32,
    pub nonce: &'a [u8; NONCE_LEN],
    pub ciphertext: &'a [u8],
    pub tag: &'a [u8; TAG_LEN],
}

impl<'a> Envelope<'a> {
    /// Splits `bytes` into its fields, checking lengths, magic, version and
    /// algorithm. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let (header, rest) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(EnvelopeError::TooShort { len: bytes.len() })?;
        let (ciphertext, tag) = rest
            .split_last_chunk::<TAG_LEN>()
            .ok_or(EnvelopeError::TooShort { len: bytes.len() })?;
        let [m0, m1, version, algorithm, k0, k1, k2, k3, nonce @ ..] = header;
        if [*m0, *m1] != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        if *version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(*version));
        }
        let mode = Mode::from_algorithm_byte(*algorithm)
            .ok_or(EnvelopeError::UnknownAlgorithm(*algorithm))?;
        let key_id = u32::from_be_bytes([*k0, *k1, *k2, *k3]);
        Ok(Envelope { mode, key_id, nonce, ciphertext, tag })
    }

    /// Bytes of plaintext this envelope decrypts to.
    pub fn plaintext_len(&self) -> usize {
        self.ciphertext.len()
    }
}

impl fmt::Debug for Envelope<'_> {
    // Lengths and header only: an envelope is not secret, but a log line full of
    // ciphertext helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("mode", &self.mode)
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Reads the key id of an envelope without looking further than its header; for
/// picking the cipher that opens it.
pub fn key_id(bytes: &[u8]) -> Result<u32, EnvelopeError> {
    Envelope::parse(bytes).map(|e| e.key_id)
}

/// True when `bytes` start like an envelope this build writes (magic and
/// version); the same test as the database-side CHECK guard, plus the version.
pub fn looks_like_envelope(bytes: &[u8]) -> bool {
    matches!(bytes, [m0, m1, VERSION, ..] if [*m0, *m1] == MAGIC)
}

/// Appends a header for `mode`, `key_id` and `nonce` to `out`.
pub fn write_header(out: &mut Vec<u8>, mode: Mode, key_id: u32, nonce: &[u8; NONCE_LEN]) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(mode.algorithm_byte());
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(nonce);
}

/// The additional authenticated data binding a value to its column:
/// `pgwarden:v1:<schema>.<table>.<column>`. Compute it once per registered
/// column, not per value.
///
/// Names are joined as they are, unquoted; two columns whose joined names
/// coincide (only possible with dots inside identifiers) share an AAD.
pub fn column_aad(schema: &str, table: &str, column: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(12 + schema.len() + table.len() + column.len() + 2);
    aad.extend_from_slice(b"pgwarden:v1:");
    aad.extend_from_slice(schema.as_bytes());
    aad.push(b'.');
    aad.extend_from_slice(table.as_bytes());
    aad.push(b'.');
    aad.extend_from_slice(column.as_bytes());
    aad
}
