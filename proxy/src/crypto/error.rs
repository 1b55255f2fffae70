//! The crypto layer's errors. None carries key material or plaintext: variants
//! hold only key names, versions, ids, lengths, paths and file modes, and every
//! message is built from those.

use super::envelope::EnvelopeError;

/// Encrypting or decrypting one value failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The envelope did not authenticate: tampered with, truncated, moved from
    /// another column, or sealed by another key. Reported as XX001
    /// (data_corrupted), never passed through.
    #[error(
        "encrypted value failed authentication: it was altered, truncated, copied from another \
         column or written under another key"
    )]
    Authentication,
    /// A well-formed envelope of a version or algorithm this build cannot open
    /// (XX001).
    #[error("{0}")]
    Unsupported(EnvelopeError),
    /// The envelope names a data key this proxy has not loaded (perhaps created
    /// after the last key reload).
    #[error(
        "encrypted value uses data key id {id}, which this pgwarden has not loaded; \
         reload the keys (or check that the key exists in pgwarden.encryption_keys)"
    )]
    UnknownKey { id: u32 },
    /// The envelope's data key is REVOKED: its values can no longer be read.
    #[error(
        "encrypted value uses data key {name} v{version} (id {id}), which is REVOKED; values \
         under a revoked key can no longer be decrypted"
    )]
    RevokedKey { id: u32, name: String, version: u32 },
    /// No ACTIVE version of the named key, so nothing can be encrypted with it.
    #[error(
        "data key {name} has no ACTIVE version; create one with `pgwarden keys rotate` \
         before writing to columns that use it"
    )]
    NoActiveKey { name: String },
    /// A value too large for the AEAD (never the case for a Postgres value).
    #[error("value of {len} bytes is too large to encrypt")]
    TooLarge { len: usize },
}

/// Loading, wrapping or unwrapping a key failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The master key file may be read (or written) by group or others.
    #[error(
        "master key file {path} has mode {mode:04o}, which lets group or others access it; \
         restrict it with `chmod 600 {path}`"
    )]
    InsecureKeyFile { path: String, mode: u32 },
    /// The master key could not be read; the message names the variable or file.
    #[error("cannot read the master key: {0}")]
    Read(String),
    /// The master key text is not base64. The text itself is never shown.
    #[error(
        "the master key is not valid base64; write 32 random bytes as base64, \
         e.g. the output of `openssl rand -base64 32`"
    )]
    MasterKeyEncoding,
    /// The master key decodes to the wrong number of bytes.
    #[error(
        "the master key decodes to {len} bytes but must be 32 (256 bits); \
         generate one with `openssl rand -base64 32`"
    )]
    MasterKeyLength { len: usize },
    /// A wrapped data key did not open under the master key.
    #[error(
        "wrong master key or corrupted key {name} v{version}: the wrapped data key does not \
         authenticate; check keys.master_key, and that pgwarden.encryption_keys was not edited"
    )]
    Unwrap { name: String, version: u32 },
    /// A data key opened but is not the one whose fingerprint was recorded.
    #[error(
        "data key {name} v{version} does not match its recorded fingerprint; \
         the key row was altered"
    )]
    FingerprintMismatch { name: String, version: u32 },
    /// Two key rows share an id.
    #[error("two data keys have id {id}; ids must be unique")]
    DuplicateId { id: u32 },
    /// Two key rows share a name and version.
    #[error("two data keys are named {name} v{version}; (name, version) must be unique")]
    DuplicateVersion { name: String, version: u32 },
    /// The AEAD refused to wrap (cannot happen for a 32-byte key).
    #[error("wrapping data key {name} v{version} failed")]
    Wrap { name: String, version: u32 },
    /// A key status not among ACTIVE, ROTATING, DEPRECATED, REVOKED.
    #[error("unknown key status; expected ACTIVE, ROTATING, DEPRECATED or REVOKED")]
    UnknownStatus,
}
