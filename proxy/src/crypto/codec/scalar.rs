//! The small types: text and char, integers, bool, uuid, bytea. Input rules
//! follow Postgres' own input functions (`int4in`, `boolin`, `uuid_in`,
//! `byteain`) so that what Postgres accepts is accepted here.

use super::Reason;

/// C's `isspace` in the C locale, which Postgres' input functions use.
pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub(super) fn trim_space(input: &[u8]) -> &[u8] {
    let start = input.iter().position(|b| !is_space(*b)).unwrap_or(input.len());
    let end = input.iter().rposition(|b| !is_space(*b)).map_or(start, |i| i + 1);
    input.get(start..end).unwrap_or_default()
}

/// Text must be UTF-8 without NUL bytes (Postgres stores neither).
pub(super) fn check_text(input: &[u8]) -> Result<(), Reason> {
    if input.contains(&0) {
        return Err("text cannot contain NUL (0x00) bytes");
    }
    std::str::from_utf8(input).map(|_| ()).map_err(|_| "not valid UTF-8")
}

/// `char(n)` values compare without trailing spaces; the canonical form drops them.
pub(super) fn strip_char_padding(input: &[u8]) -> &[u8] {
    let end = input.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    input.get(..end).unwrap_or_default()
}

/// The canonical decimal of an integer in text format, within `min..=max`.
pub(super) fn int_text(input: &[u8], min: i64, max: i64) -> Result<Vec<u8>, Reason> {
    Ok(parse_int(input, min, max)?.to_string().into_bytes())
}

/// Postgres 16's `pg_strtoint*`: surrounding whitespace, a sign, decimal digits
/// or a `0x`/`0o`/`0b` prefix, single `_` between digits.
fn parse_int(input: &[u8], min: i64, max: i64) -> Result<i64, Reason> {
    const SYNTAX: Reason = "invalid integer syntax; write a whole number, e.g. 42";
    const RANGE: Reason = "value out of range for the type";
    let s = trim_space(input);
    let (negative, s) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    let (radix, digits, prefixed) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest, true),
        [b'0', b'o' | b'O', rest @ ..] => (8, rest, true),
        [b'0', b'b' | b'B', rest @ ..] => (2, rest, true),
        _ => (10, s, false),
    };
    let mut magnitude: u128 = 0;
    let mut seen_digit = false;
    let mut after_underscore = false;
    for &b in digits {
        if b == b'_' {
            // An underscore sits between digits (or, after a prefix, before them).
            if after_underscore || (!seen_digit && !prefixed) {
                return Err(SYNTAX);
            }
            after_underscore = true;
            continue;
        }
        let digit = char::from(b).to_digit(radix).ok_or(SYNTAX)?;
        magnitude = magnitude * u128::from(radix) + u128::from(digit);
        if magnitude > u128::from(u64::MAX) {
            return Err(RANGE);
        }
        seen_digit = true;
        after_underscore = false;
    }
    if !seen_digit || after_underscore {
        return Err(SYNTAX);
    }
    let magnitude = i128::try_from(magnitude).map_err(|_| RANGE)?;
    let value = if negative { -magnitude } else { magnitude };
    if value < i128::from(min) || value > i128::from(max) {
        return Err(RANGE);
    }
    i64::try_from(value).map_err(|_| RANGE)
}

/// Big-endian `size`-byte integer to canonical decimal.
pub(super) fn int_binary(input: &[u8], size: i16) -> Result<Vec<u8>, Reason> {
    let value = match (size, input) {
        (2, [a, b]) => i64::from(i16::from_be_bytes([*a, *b])),
        (4, [a, b, c, d]) => i64::from(i32::from_be_bytes([*a, *b, *c, *d])),
        (8, bytes) if bytes.len() == 8 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            i64::from_be_bytes(be)
        }
        (2, _) => return Err("a binary int2 is 2 bytes"),
        (4, _) => return Err("a binary int4 is 4 bytes"),
        _ => return Err("a binary int8 is 8 bytes"),
    };
    Ok(value.to_string().into_bytes())
}

/// Canonical decimal to a big-endian `size`-byte integer.
pub(super) fn int_to_binary(canonical: &[u8], size: i16, out: &mut Vec<u8>) -> Result<(), Reason> {
    let text = std::str::from_utf8(canonical).map_err(|_| "not canonical")?;
    let value: i64 = text.parse().map_err(|_| "not canonical")?;
    match size {
        2 => {
            out.extend_from_slice(&i16::try_from(value).map_err(|_| "out of range")?.to_be_bytes())
        }
        4 => {
            out.extend_from_slice(&i32::try_from(value).map_err(|_| "out of range")?.to_be_bytes())
        }
        _ => out.extend_from_slice(&value.to_be_bytes()),
    }
    Ok(())
}

/// Postgres' `boolin`: surrounding whitespace, then case-insensitively any
/// prefix of `true`, `false`, `yes`, `no`; `on`; `of`/`off`; `1`; `0`.
pub(super) fn bool_text(input: &[u8]) -> Result<bool, Reason> {
    let s = trim_space(input).to_ascii_lowercase();
    let prefix_of = |word: &[u8], min: usize| s.len() >= min && word.starts_with(&s);
    if prefix_of(b"true", 1) || prefix_of(b"yes", 1) || prefix_of(b"on", 2) || s == b"1" {
        Ok(true)
    } else if prefix_of(b"false", 1) || prefix_of(b"no", 1) || prefix_of(b"off", 2) || s == b"0" {
        Ok(false)
    } else {
        Err("invalid boolean; write true or false (also t/f, yes/no, on/off, 1/0)")
    }
}

/// Postgres' `uuid_in`: 32 hex digits in any case, optionally in braces, with
/// an optional hyphen after any group of four digits. No whitespace.
pub(super) fn uuid_text(input: &[u8]) -> Result<[u8; 16], Reason> {
    const SYNTAX: Reason = "invalid uuid; write 32 hex digits, e.g. \
                            a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    let (braces, mut rest) = match input {
        [b'{', rest @ ..] => (true, rest),
        _ => (false, input),
    };
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let [hi, lo, tail @ ..] = rest else { return Err(SYNTAX) };
        let hi = char::from(*hi).to_digit(16).ok_or(SYNTAX)?;
        let lo = char::from(*lo).to_digit(16).ok_or(SYNTAX)?;
        *byte = u8::try_from(hi * 16 + lo).map_err(|_| SYNTAX)?;
        rest = tail;
        if i % 2 == 1 && i < 15 {
            if let [b'-', tail @ ..] = rest {
                rest = tail;
            }
        }
    }
    let rest = match (braces, rest) {
        (true, [b'}', tail @ ..]) => tail,
        (true, _) => return Err(SYNTAX),
        (false, rest) => rest,
    };
    if rest.is_empty() {
        Ok(out)
    } else {
        Err(SYNTAX)
    }
}

/// Appends the lowercase hyphenated form (8-4-4-4-12).
pub(super) fn uuid_write(bytes: &[u8; 16], out: &mut Vec<u8>) {
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        push_hex(*b, out);
    }
}

/// Postgres' `byteain`: `\x` then hex digit pairs (whitespace allowed between
/// pairs), or the escape format (`\\` and `\ooo` octal escapes).
pub(super) fn bytea_text(input: &[u8]) -> Result<Vec<u8>, Reason> {
    if let [b'\\', b'x', hex @ ..] = input {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut rest = hex;
        loop {
            match rest {
                [] => return Ok(out),
                [b' ' | b'\n' | b'\t' | b'\r', tail @ ..] => rest = tail,
                [hi, lo, tail @ ..] => {
                    let hi = char::from(*hi).to_digit(16).ok_or("invalid hexadecimal digit")?;
                    let lo = char::from(*lo).to_digit(16).ok_or("invalid hexadecimal digit")?;
                    out.push(u8::try_from(hi * 16 + lo).map_err(|_| "invalid hexadecimal digit")?);
                    rest = tail;
                }
                [_] => return Err("invalid hexadecimal data: odd number of digits"),
            }
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    loop {
        match rest {
            [] => return Ok(out),
            [b'\\', b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', tail @ ..] => {
                out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                rest = tail;
            }
            [b'\\', ..] => return Err("invalid escape; write bytea as \\x followed by hex digits"),
            [b, tail @ ..] => {
                out.push(*b);
                rest = tail;
            }
        }
    }
}

/// Appends Postgres' hex output: `\x` and two lowercase digits per byte.
pub(super) fn bytea_hex(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(2 + bytes.len() * 2);
    out.extend_from_slice(b"\\x");
    crate::hex::encode_into(bytes, out);
}

fn push_hex(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0x0f)]);
}
