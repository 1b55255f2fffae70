//! Logical types and their canonical plaintext.
//!
//! What gets encrypted is a value's **canonical text form**, so that one value
//! always gives one plaintext whatever form (`'007'`, `' 7'`) or wire format
//! (text or binary) the client used; deterministic equality depends on it.
//! [`canonicalize_text`] and [`canonicalize_binary`] turn what a client sends
//! into that form; [`to_text`] and [`to_binary`] turn it back into what a client
//! asked for in results.
//!
//! # Canonical forms
//! | type | canonical | notes |
//! |---|---|---|
//! | text, varchar | the UTF-8 bytes | NUL bytes and invalid UTF-8 are refused, as Postgres does |
//! | char | the UTF-8 bytes, trailing spaces removed | Postgres ignores trailing spaces when comparing `char(n)`; results come back unpadded |
//! | int2, int4, int8 | decimal, no leading zeros | input as Postgres 16 reads it: surrounding whitespace, sign, `_` between digits, `0x`/`0o`/`0b` |
//! | numeric | decimal without trailing fractional zeros | `1.50` → `1.5`, so `1.5 = 1.50` matches in deterministic mode (Postgres compares them equal); the displayed scale is lost; exponents are expanded; `NaN`, `Infinity`, `-Infinity` |
//! | float4, float8 | Postgres' shortest exact output (`1.5`, `1e+100`, `1e+06` for float4) | `-0` → `0` (equal in Postgres); `NaN`, `Infinity`, `-Infinity`; hexadecimal input refused |
//! | bool | `t` or `f` (`boolout`) | input: any prefix of true/false/yes/no, `on`, `off`, `1`, `0`, case-insensitive |
//! | date | `YYYY-MM-DD[ BC]` | ISO input only (`YYYY-MM-DD` with a year of 3+ digits, optional time ignored, `epoch`): `12-10-11` would depend on DateStyle, so it is refused; `infinity`, `-infinity` |
//! | timestamp | `YYYY-MM-DD HH:MM:SS[.ffffff][ BC]` | ISO input, `T` or space; a zone is ignored, as Postgres does; `infinity`, `-infinity` |
//! | timestamptz | as timestamp, converted to UTC, with `+00` | input must carry an offset (`Z`, `+02`, `-05:30`, `UTC`): the session's TimeZone is unknown here, so a bare time is refused; zone names are refused |
//! | uuid | lowercase, hyphenated | input as Postgres reads it (braces, any case, hyphens between groups of 4) |
//! | json | the text as sent, validated | json keeps its text (and, like Postgres, accepts `\u0000` and lone surrogate escapes) |
//! | jsonb | Postgres' jsonb output: keys ordered by length then bytes, the last of duplicate keys kept, `", "` and `": "` separators, numbers as Postgres numeric (scale kept, exponents expanded) | `\u0000` refused, as Postgres does |
//! | bytea | the raw bytes | text input `\x` hex or escape format; text output `\x` hex |
//!
//! Text and binary forms were checked against Postgres 15 (its input, output,
//! send and receive functions) on every kind of input the tests use. Where
//! pgwarden deliberately differs, the table says so: numeric scale, char
//! padding, `-0`, and inputs refused rather than guessed.
//!
//! Errors name the type and what is wrong, never the value: it may be the
//! secret the column protects.

use std::borrow::Cow;

pub(crate) mod datetime;
mod float;
mod json;
mod numeric;
mod scalar;
#[cfg(test)]
mod tests;

/// Why an input was refused; a fixed string, so it can never carry the value.
type Reason = &'static str;

pub use pgwarden_config::{LogicalType, UnknownType};

/// A Postgres wire format code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    /// The format for a Bind/RowDescription format code (0 text, 1 binary).
    pub const fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }

    pub const fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }
}

/// A value that is not valid for its column's logical type (22P02 for input).
/// The reason is a fixed string: the value never appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for type {ty}: {reason}")]
pub struct CodecError {
    pub ty: LogicalType,
    pub reason: &'static str,
}

/// The canonical form of `input`, a value in `format` (see
/// [`canonicalize_text`], [`canonicalize_binary`]).
pub fn canonicalize(
    ty: LogicalType,
    format: Format,
    input: &[u8],
) -> Result<Cow<'_, [u8]>, CodecError> {
    match format {
        Format::Text => canonicalize_text(ty, input),
        Format::Binary => canonicalize_binary(ty, input),
    }
}

/// The canonical form for a column of type `ty` of a value the client sent
/// as type `declared` (its Parse said so): a binary value is read in the
/// declared type's format and converted through its text form, as a cast
/// would. Text values read the same whatever was declared.
pub fn canonicalize_as(
    ty: LogicalType,
    declared: Option<LogicalType>,
    format: Format,
    input: &[u8],
) -> Result<Cow<'_, [u8]>, CodecError> {
    match (format, declared) {
        (Format::Binary, Some(d)) if d != ty => {
            let canonical = canonicalize_binary(d, input)?;
            let mut text = Vec::with_capacity(canonical.len() + 2);
            to_text(d, &canonical, &mut text)?;
            Ok(Cow::Owned(canonicalize_text(ty, &text)?.into_owned()))
        }
        _ => canonicalize(ty, format, input),
    }
}

/// The canonical form of a value sent in text format.
pub fn canonicalize_text(ty: LogicalType, input: &[u8]) -> Result<Cow<'_, [u8]>, CodecError> {
    use datetime::Kind;
    let canonical = match ty {
        LogicalType::Text | LogicalType::Varchar => {
            scalar::check_text(input).map(|()| Cow::Borrowed(input))
        }
        LogicalType::Char => {
            scalar::check_text(input).map(|()| Cow::Borrowed(scalar::strip_char_padding(input)))
        }
        LogicalType::Int2 => {
            scalar::int_text(input, i16::MIN.into(), i16::MAX.into()).map(Cow::Owned)
        }
        LogicalType::Int4 => {
            scalar::int_text(input, i32::MIN.into(), i32::MAX.into()).map(Cow::Owned)
        }
        LogicalType::Int8 => scalar::int_text(input, i64::MIN, i64::MAX).map(Cow::Owned),
        LogicalType::Numeric => numeric::canonical_text(input).map(Cow::Owned),
        LogicalType::Float4 => float::canonical_text::<true>(input).map(Cow::Owned),
        LogicalType::Float8 => float::canonical_text::<false>(input).map(Cow::Owned),
        LogicalType::Bool => scalar::bool_text(input).map(|b| Cow::Borrowed(bool_text(b))),
        LogicalType::Date => datetime::canonical_text(Kind::Date, input).map(Cow::Owned),
        LogicalType::Timestamp => datetime::canonical_text(Kind::Timestamp, input).map(Cow::Owned),
        LogicalType::Timestamptz => {
            datetime::canonical_text(Kind::Timestamptz, input).map(Cow::Owned)
        }
        LogicalType::Uuid => scalar::uuid_text(input).map(|bytes| Cow::Owned(uuid_text(&bytes))),
        LogicalType::Json => json::validate(input).map(|()| Cow::Borrowed(input)),
        LogicalType::Jsonb => json::canonical_jsonb(input).map(Cow::Owned),
        LogicalType::Bytea => scalar::bytea_text(input).map(Cow::Owned),
    };
    canonical.map_err(|reason| CodecError { ty, reason })
}

/// The canonical form of a value sent in binary format (Postgres' `*send`
/// formats: big-endian integers and IEEE floats, days and microseconds since
/// 2000-01-01, base-10000 numeric, version-1 jsonb).
pub fn canonicalize_binary(ty: LogicalType, input: &[u8]) -> Result<Cow<'_, [u8]>, CodecError> {
    use datetime::Kind;
    let canonical = match ty {
        // The text types' binary form is their text.
        LogicalType::Text | LogicalType::Varchar | LogicalType::Char | LogicalType::Json => {
            return canonicalize_text(ty, input);
        }
        LogicalType::Jsonb => {
            json::jsonb_binary_text(input).and_then(json::canonical_jsonb).map(Cow::Owned)
        }
        LogicalType::Bytea => Ok(Cow::Borrowed(input)),
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            scalar::int_binary(input, ty.type_size()).map(Cow::Owned)
        }
        LogicalType::Numeric => numeric::canonical_binary(input).map(Cow::Owned),
        LogicalType::Float4 => float::canonical_binary::<true>(input).map(Cow::Owned),
        LogicalType::Float8 => float::canonical_binary::<false>(input).map(Cow::Owned),
        LogicalType::Bool => match input {
            [0] => Ok(Cow::Borrowed(bool_text(false))),
            [1] => Ok(Cow::Borrowed(bool_text(true))),
            _ => Err("a binary bool is one byte, 0 or 1"),
        },
        LogicalType::Date => datetime::canonical_binary(Kind::Date, input).map(Cow::Owned),
        LogicalType::Timestamp => {
            datetime::canonical_binary(Kind::Timestamp, input).map(Cow::Owned)
        }
        LogicalType::Timestamptz => {
            datetime::canonical_binary(Kind::Timestamptz, input).map(Cow::Owned)
        }
        LogicalType::Uuid => <&[u8; 16]>::try_from(input)
            .map(|bytes| Cow::Owned(uuid_text(bytes)))
            .map_err(|_| "a binary uuid is 16 bytes"),
    };
    canonical.map_err(|reason| CodecError { ty, reason })
}

fn bool_text(b: bool) -> &'static [u8] {
    if b {
        b"t"
    } else {
        b"f"
    }
}

fn uuid_text(bytes: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    scalar::uuid_write(bytes, &mut out);
    out
}

/// Appends the value in `format` for a result (see [`to_text`], [`to_binary`]).
pub fn encode(
    ty: LogicalType,
    format: Format,
    canonical: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    match format {
        Format::Text => to_text(ty, canonical, out),
        Format::Binary => to_binary(ty, canonical, out),
    }
}

/// Appends Postgres' text output for a canonical value to `out`. The canonical
/// form is the text output for every type but bytea (written `\x` hex); numeric
/// comes back without trailing fractional zeros and char unpadded.
pub fn to_text(ty: LogicalType, canonical: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    match ty {
        LogicalType::Bytea => scalar::bytea_hex(canonical, out),
        _ => out.extend_from_slice(canonical),
    }
    Ok(())
}

/// Appends the binary wire form of a canonical value to `out`. Fails only if
/// `canonical` is not in canonical form; `out` is then left as it was.
pub fn to_binary(ty: LogicalType, canonical: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    use datetime::Kind;
    let written = match ty {
        LogicalType::Text
        | LogicalType::Varchar
        | LogicalType::Char
        | LogicalType::Json
        | LogicalType::Bytea => {
            out.extend_from_slice(canonical);
            Ok(())
        }
        LogicalType::Jsonb => {
            out.push(json::JSONB_VERSION);
            out.extend_from_slice(canonical);
            Ok(())
        }
        LogicalType::Int2 | LogicalType::Int4 | LogicalType::Int8 => {
            scalar::int_to_binary(canonical, ty.type_size(), out)
        }
        LogicalType::Numeric => numeric::to_binary(canonical, out),
        LogicalType::Float4 => float::to_binary::<true>(canonical, out),
        LogicalType::Float8 => float::to_binary::<false>(canonical, out),
        LogicalType::Bool => match canonical {
            b"t" | b"f" => {
                out.push(u8::from(canonical == b"t"));
                Ok(())
            }
            _ => Err("not canonical"),
        },
        LogicalType::Date => datetime::to_binary(Kind::Date, canonical, out),
        LogicalType::Timestamp => datetime::to_binary(Kind::Timestamp, canonical, out),
        LogicalType::Timestamptz => datetime::to_binary(Kind::Timestamptz, canonical, out),
        LogicalType::Uuid => scalar::uuid_text(canonical).map(|b| out.extend_from_slice(&b)),
    };
    // Each writer checks all of its input before appending anything.
    written.map_err(|_| CodecError { ty, reason: "stored value is not in canonical form" })
}
