//! Column encryption: the envelope stored in Postgres, the ciphers that seal and
//! open it, the keys behind them, and the canonical plaintext of each logical
//! type.
//!
//! Writing a value: [`codec::canonicalize`] → [`Keyring::active`] →
//! [`ColumnCipher::encrypt`] with the column's [`envelope::column_aad`].
//! Reading one: [`Keyring::decrypt`] → [`codec::encode`] in the format the
//! client asked for.
//!
//! # Layout
//! - [`envelope`]: the byte layout DESIGN.md fixes, parsed without panics;
//! - [`cipher`]: [`ColumnCipher`], AES-256-GCM (randomized) and AES-256-GCM-SIV
//!   (deterministic) under one data key;
//! - [`keyring`]: [`MasterKey`], [`DataKey`], wrapping, and the [`Keyring`] of
//!   loaded keys;
//! - [`codec`]: [`LogicalType`]s and their canonical forms;
//! - [`error`]: [`CryptoError`] and [`KeyError`], which never carry key bytes or
//!   plaintext.

pub mod cipher;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod keyring;
#[cfg(test)]
mod tests;

pub use cipher::ColumnCipher;
pub use codec::{CodecError, Format, LogicalType};
pub use envelope::{EnvelopeError, Mode};
pub use error::{CryptoError, KeyError};
pub use keyring::{DataKey, KeyRow, KeyStatus, Keyring, MasterKey};
