//! numeric: Postgres' arbitrary-precision decimal, in text and in its binary
//! base-10000 form.
//!
//! The canonical form drops trailing fractional zeros (`1.50` → `1.5`): Postgres
//! compares `1.5 = 1.50` as equal, and so must deterministic encryption. jsonb
//! numbers keep their scale instead, as Postgres' jsonb output does.

use super::scalar::{is_space, trim_space};
use super::Reason;

/// Most digits before the decimal point Postgres' numeric holds.
const MAX_INT_DIGITS: i64 = 131_072;
/// Most digits after it (`NUMERIC_DSCALE_MAX`).
const MAX_SCALE: i64 = 0x3FFF;

const SYNTAX: Reason = "invalid numeric syntax; write a decimal number, e.g. 12.34";
const RANGE: Reason = "value overflows the numeric format";

const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
const INFINITY_DSCALE: u16 = 32;

/// A parsed numeric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Numeric {
    NaN,
    Infinity,
    NegInfinity,
    Finite(Decimal),
}

/// A finite decimal as ASCII digits around the decimal point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decimal {
    /// Never set for zero.
    negative: bool,
    /// Digits before the point, without leading zeros (empty for zero).
    int: Vec<u8>,
    /// Digits after the point; as many as the display scale.
    frac: Vec<u8>,
}

impl Decimal {
    fn strip_trailing_zeros(&mut self) {
        while self.frac.last() == Some(&b'0') {
            self.frac.pop();
        }
    }

    fn normalize_sign(&mut self) {
        if self.int.is_empty() && self.frac.iter().all(|d| *d == b'0') {
            self.negative = false;
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        if self.negative {
            out.push(b'-');
        }
        if self.int.is_empty() {
            out.push(b'0');
        }
        out.extend_from_slice(&self.int);
        if !self.frac.is_empty() {
            out.push(b'.');
            out.extend_from_slice(&self.frac);
        }
    }
}

impl Numeric {
    /// Appends Postgres' text output (`numeric_out`).
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Numeric::NaN => out.extend_from_slice(b"NaN"),
            Numeric::Infinity => out.extend_from_slice(b"Infinity"),
            Numeric::NegInfinity => out.extend_from_slice(b"-Infinity"),
            Numeric::Finite(d) => d.write(out),
        }
    }
}

/// The canonical form of numeric text input.
pub(super) fn canonical_text(input: &[u8]) -> Result<Vec<u8>, Reason> {
    let mut value = parse_text(input)?;
    if let Numeric::Finite(d) = &mut value {
        d.strip_trailing_zeros();
    }
    let mut out = Vec::with_capacity(input.len());
    value.write(&mut out);
    Ok(out)
}

/// Postgres' `numeric_in` (without non-decimal integers): surrounding
/// whitespace, a sign, digits with one optional point and single `_` between
/// digits, an optional exponent; `NaN`, `Infinity`, `inf` in any case.
pub(super) fn parse_text(input: &[u8]) -> Result<Numeric, Reason> {
    let s = trim_space(input);
    let (negative, body) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if !matches!(body.first(), Some(b'0'..=b'9' | b'.')) {
        return if s.eq_ignore_ascii_case(b"nan") {
            Ok(Numeric::NaN)
        } else if body.eq_ignore_ascii_case(b"infinity") || body.eq_ignore_ascii_case(b"inf") {
            Ok(if negative { Numeric::NegInfinity } else { Numeric::Infinity })
        } else {
            Err(SYNTAX)
        };
    }
    let mut digits = Vec::with_capacity(body.len());
    let mut int_len: i64 = 0;
    let mut point = false;
    let mut rest = body;
    loop {
        match rest {
            [d @ b'0'..=b'9', tail @ ..] => {
                digits.push(*d);
                if !point {
                    int_len += 1;
                }
                rest = tail;
            }
            [b'.', tail @ ..] if !point => {
                point = true;
                rest = tail;
            }
            // An underscore sits between two digits.
            [b'_', tail @ ..] if matches!(rest_before(body, rest), Some(b'0'..=b'9')) => {
                if !matches!(tail.first(), Some(b'0'..=b'9')) {
                    return Err(SYNTAX);
                }
                rest = tail;
            }
            _ => break,
        }
    }
    if digits.is_empty() {
        return Err(SYNTAX);
    }
    let frac_len = i64::try_from(digits.len()).map_err(|_| RANGE)? - int_len;
    let exponent = match rest {
        [b'e' | b'E', tail @ ..] => {
            let (exponent, tail) = parse_exponent(tail)?;
            rest = tail;
            exponent
        }
        _ => 0,
    };
    if !rest.iter().all(|b| is_space(*b)) {
        return Err(SYNTAX);
    }
    let scale = (frac_len - exponent).max(0);
    if scale > MAX_SCALE {
        return Err(RANGE);
    }
    let leading = digits.iter().take_while(|d| **d == b'0').count();
    let digits = digits.get(leading..).unwrap_or_default();
    let mut decimal = Decimal { negative, int: Vec::new(), frac: Vec::new() };
    if digits.is_empty() {
        decimal.frac = vec![b'0'; usize::try_from(scale).map_err(|_| RANGE)?];
        decimal.negative = false;
        return Ok(Numeric::Finite(decimal));
    }
    let len = i64::try_from(digits.len()).map_err(|_| RANGE)?;
    // Where the point falls among the significant digits.
    let at = int_len - i64::try_from(leading).map_err(|_| RANGE)? + exponent;
    if at > MAX_INT_DIGITS {
        return Err(RANGE);
    }
    let index = |n: i64| usize::try_from(n).map_err(|_| RANGE);
    if at <= 0 {
        decimal.frac = vec![b'0'; index(-at)?];
        decimal.frac.extend_from_slice(digits);
    } else if at >= len {
        decimal.int = digits.to_vec();
        decimal.int.resize(index(at)?, b'0');
    } else {
        let (int, frac) = digits.split_at(index(at)?);
        decimal.int = int.to_vec();
        decimal.frac = frac.to_vec();
    }
    decimal.normalize_sign();
    Ok(Numeric::Finite(decimal))
}

/// The byte before `rest` within `whole` (`rest` being a suffix of it).
fn rest_before(whole: &[u8], rest: &[u8]) -> Option<u8> {
    let at = whole.len().checked_sub(rest.len())?.checked_sub(1)?;
    whole.get(at).copied()
}

/// `[+-]digits` with single `_` between digits; huge exponents are out of range.
fn parse_exponent(input: &[u8]) -> Result<(i64, &[u8]), Reason> {
    let (negative, mut rest) = match input {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, input),
    };
    if !matches!(rest.first(), Some(b'0'..=b'9')) {
        return Err(SYNTAX);
    }
    let mut value: i64 = 0;
    loop {
        match rest {
            [d @ b'0'..=b'9', tail @ ..] => {
                value = value * 10 + i64::from(d - b'0');
                if value > i64::from(i32::MAX / 2) {
                    return Err(RANGE);
                }
                rest = tail;
            }
            [b'_', d @ b'0'..=b'9', tail @ ..] => {
                value = value * 10 + i64::from(d - b'0');
                rest = tail;
            }
            _ => break,
        }
    }
    Ok((if negative { -value } else { value }, rest))
}

/// Postgres' binary numeric (`numeric_send`): ndigits, weight, sign, dscale
/// (16 bits each), then ndigits base-10000 digits, the first worth
/// 10000^weight. Digits beyond dscale are truncated, as `numeric_recv` does.
pub(super) fn canonical_binary(input: &[u8]) -> Result<Vec<u8>, Reason> {
    const MALFORMED: Reason = "malformed binary numeric";
    let word = |i: usize| -> Result<u16, Reason> {
        let bytes = input.get(i * 2..i * 2 + 2).and_then(|b| <[u8; 2]>::try_from(b).ok());
        bytes.map(u16::from_be_bytes).ok_or(MALFORMED)
    };
    let ndigits = usize::from(word(0)?);
    if ndigits > i16::MAX as usize || input.len() != 8 + 2 * ndigits {
        return Err(MALFORMED);
    }
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = word(3)?;
    if i64::from(dscale) > MAX_SCALE {
        return Err(MALFORMED);
    }
    let mut groups = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let g = word(4 + i)?;
        if g > 9999 {
            return Err(MALFORMED);
        }
        groups.push(g);
    }
    let value = match sign {
        SIGN_NAN => Numeric::NaN,
        SIGN_PINF => Numeric::Infinity,
        SIGN_NINF => Numeric::NegInfinity,
        SIGN_POS | SIGN_NEG => {
            let group = |position: i64| -> u16 {
                let index = weight - position;
                usize::try_from(index).ok().and_then(|i| groups.get(i).copied()).unwrap_or(0)
            };
            let mut int = Vec::new();
            for position in (0..=weight).rev() {
                push_group(group(position), &mut int);
            }
            let leading = int.iter().take_while(|d| **d == b'0').count();
            int.drain(..leading);
            let mut frac = Vec::new();
            let scale = usize::from(dscale);
            let mut position = -1;
            while frac.len() < scale {
                push_group(group(position), &mut frac);
                position -= 1;
            }
            frac.truncate(scale);
            let mut d = Decimal { negative: sign == SIGN_NEG, int, frac };
            d.strip_trailing_zeros();
            d.normalize_sign();
            Numeric::Finite(d)
        }
        _ => return Err(MALFORMED),
    };
    let mut out = Vec::new();
    value.write(&mut out);
    Ok(out)
}

fn push_group(group: u16, out: &mut Vec<u8>) {
    for divisor in [1000, 100, 10, 1] {
        // group <= 9999, so each quotient is one digit.
        out.push(b'0' + ((group / divisor) % 10) as u8);
    }
}

/// Canonical text to the binary form; dscale is the canonical fraction's length.
pub(super) fn to_binary(canonical: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    let d = match parse_text(canonical)? {
        Numeric::NaN => return write_header(out, 0, 0, SIGN_NAN, 0),
        // Postgres sends dscale 32 with infinities (an artefact of its header
        // layout, ignored on receipt); the same bytes are sent here.
        Numeric::Infinity => return write_header(out, 0, 0, SIGN_PINF, INFINITY_DSCALE),
        Numeric::NegInfinity => return write_header(out, 0, 0, SIGN_NINF, INFINITY_DSCALE),
        Numeric::Finite(d) => d,
    };
    let mut groups: Vec<u16> = Vec::with_capacity((d.int.len() + d.frac.len()) / 4 + 2);
    let int_pad = (4 - d.int.len() % 4) % 4;
    let int_groups = (d.int.len() + int_pad) / 4;
    let frac_pad = (4 - d.frac.len() % 4) % 4;
    // Digits padded to whole groups on both sides of the point.
    let mut all = Vec::with_capacity(int_pad + d.int.len() + d.frac.len() + frac_pad);
    all.resize(int_pad, b'0');
    all.extend_from_slice(&d.int);
    all.extend_from_slice(&d.frac);
    all.resize(all.len() + frac_pad, b'0');
    for chunk in all.chunks(4) {
        groups.push(chunk.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')));
    }
    let mut weight = i64::try_from(int_groups).map_err(|_| RANGE)? - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= i64::try_from(leading).map_err(|_| RANGE)?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let ndigits =
        u16::try_from(groups.len()).ok().filter(|n| *n <= i16::MAX as u16).ok_or(RANGE)?;
    let weight = i16::try_from(weight).map_err(|_| RANGE)?;
    let dscale = u16::try_from(d.frac.len()).map_err(|_| RANGE)?;
    let sign = if d.negative { SIGN_NEG } else { SIGN_POS };
    write_header(out, ndigits, weight as u16, sign, dscale)?;
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(())
}

fn write_header(
    out: &mut Vec<u8>,
    ndigits: u16,
    weight: u16,
    sign: u16,
    dscale: u16,
) -> Result<(), Reason> {
    for word in [ndigits, weight, sign, dscale] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    Ok(())
}
