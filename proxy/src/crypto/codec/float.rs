//! float4 and float8. The canonical form is Postgres' own output (since
//! Postgres 12, `extra_float_digits = 1`): the shortest decimal strictly inside
//! the value's rounding interval, ties to even, in fixed notation for decimal
//! exponents from -4 up to 14 (float8) or 5 (float4), otherwise `1.5e+20` style
//! with at least two exponent digits. Checked digit for digit against Postgres
//! 15 on some 120,000 values. `-0` becomes `0` (Postgres compares them equal,
//! and deterministic encryption must too); `NaN`, `Infinity` and `-Infinity`
//! are kept. `F4` selects float4.

use super::scalar::trim_space;
use super::Reason;

const SYNTAX: Reason = "invalid floating-point syntax; write a decimal number, e.g. 1.5 or 2e-3";
const RANGE: Reason = "value out of range for the type";

#[derive(Debug, Clone, Copy)]
enum Float {
    F4(f32),
    F8(f64),
}

/// The canonical form of float text input.
pub(super) fn canonical_text<const F4: bool>(input: &[u8]) -> Result<Vec<u8>, Reason> {
    let mut out = Vec::with_capacity(24);
    write(parse::<F4>(input)?, &mut out);
    Ok(out)
}

/// The canonical form of a big-endian IEEE 754 value.
pub(super) fn canonical_binary<const F4: bool>(input: &[u8]) -> Result<Vec<u8>, Reason> {
    let value = if F4 {
        let bytes: [u8; 4] = input.try_into().map_err(|_| "a binary float4 is 4 bytes")?;
        Float::F4(f32::from_be_bytes(bytes))
    } else {
        let bytes: [u8; 8] = input.try_into().map_err(|_| "a binary float8 is 8 bytes")?;
        Float::F8(f64::from_be_bytes(bytes))
    };
    let mut out = Vec::with_capacity(24);
    write(value, &mut out);
    Ok(out)
}

/// Canonical text to big-endian IEEE 754.
pub(super) fn to_binary<const F4: bool>(canonical: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    match parse::<F4>(canonical)? {
        Float::F4(v) => out.extend_from_slice(&v.to_be_bytes()),
        Float::F8(v) => out.extend_from_slice(&v.to_be_bytes()),
    }
    Ok(())
}

/// Postgres' `float8in`/`float4in` without hexadecimal input: surrounding
/// whitespace, a sign, digits with an optional point, an optional exponent;
/// `NaN`, `Infinity`, `inf` in any case. Overflow, and underflow to zero of a
/// non-zero number, are out of range (denormals are kept).
fn parse<const F4: bool>(input: &[u8]) -> Result<Float, Reason> {
    let text = std::str::from_utf8(trim_space(input)).map_err(|_| SYNTAX)?;
    let (negative, unsigned) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text.as_bytes()),
    };
    let special = if unsigned.eq_ignore_ascii_case(b"nan") {
        Some(f64::NAN)
    } else if unsigned.eq_ignore_ascii_case(b"infinity") || unsigned.eq_ignore_ascii_case(b"inf") {
        Some(if negative { f64::NEG_INFINITY } else { f64::INFINITY })
    } else {
        None
    };
    if let Some(v) = special {
        return Ok(if F4 { Float::F4(v as f32) } else { Float::F8(v) });
    }
    let nonzero = check_syntax(unsigned)?;
    let (infinite, zero, value) = if F4 {
        let v: f32 = text.parse().map_err(|_| SYNTAX)?;
        (v.is_infinite(), v == 0.0, Float::F4(v))
    } else {
        let v: f64 = text.parse().map_err(|_| SYNTAX)?;
        (v.is_infinite(), v == 0.0, Float::F8(v))
    };
    if infinite || (zero && nonzero) {
        return Err(RANGE);
    }
    Ok(value)
}

/// Checks `digits[.digits][e[+-]digits]` (at least one mantissa digit) and
/// says whether any mantissa digit is non-zero.
fn check_syntax(s: &[u8]) -> Result<bool, Reason> {
    let mut mantissa_digits = 0;
    let mut nonzero = false;
    let mut point = false;
    let mut rest = s;
    loop {
        match rest {
            [d @ b'0'..=b'9', tail @ ..] => {
                mantissa_digits += 1;
                nonzero |= *d != b'0';
                rest = tail;
            }
            [b'.', tail @ ..] if !point => {
                point = true;
                rest = tail;
            }
            _ => break,
        }
    }
    if mantissa_digits == 0 {
        return Err(SYNTAX);
    }
    if let [b'e' | b'E', tail @ ..] = rest {
        let digits = match tail {
            [b'+' | b'-', digits @ ..] => digits,
            digits => digits,
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(SYNTAX);
        }
        rest = &[];
    }
    if rest.is_empty() {
        Ok(nonzero)
    } else {
        Err(SYNTAX)
    }
}

/// Appends Postgres' shortest-exact output.
fn write(value: Float, out: &mut Vec<u8>) {
    let (nan, infinite, negative, zero) = match value {
        Float::F4(v) => (v.is_nan(), v.is_infinite(), v.is_sign_negative(), v == 0.0),
        Float::F8(v) => (v.is_nan(), v.is_infinite(), v.is_sign_negative(), v == 0.0),
    };
    if nan {
        return out.extend_from_slice(b"NaN");
    }
    if infinite {
        return out.extend_from_slice(if negative { b"-Infinity" } else { b"Infinity" });
    }
    if zero {
        return out.push(b'0');
    }
    let (digits, exponent) = shortest(value);
    let fixed_below = if matches!(value, Float::F4(_)) { 6 } else { 15 };
    if negative {
        out.push(b'-');
    }
    if (-4..fixed_below).contains(&exponent) {
        if exponent >= 0 {
            let int_len = usize::try_from(exponent).unwrap_or(0) + 1;
            let (int, frac) = digits.split_at(int_len.min(digits.len()));
            out.extend_from_slice(int);
            out.resize(out.len() + (int_len - int.len()), b'0');
            if !frac.is_empty() {
                out.push(b'.');
                out.extend_from_slice(frac);
            }
        } else {
            out.extend_from_slice(b"0.");
            let zeros = usize::try_from(-exponent - 1).unwrap_or(0);
            out.resize(out.len() + zeros, b'0');
            out.extend_from_slice(&digits);
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.extend_from_slice(first);
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        out.extend_from_slice(format!("e{sign}{:02}", exponent.unsigned_abs()).as_bytes());
    }
}

/// Postgres' digits for `value` (absolute) and the decimal exponent of the
/// first. Postgres (Ryū built without `STRICTLY_SHORTEST`) takes the shortest
/// decimal strictly inside the rounding interval, the closest to the value,
/// ties to even. Rust's `{:e}` agrees except in rare cases: it may take a
/// decimal lying exactly on the interval's edge, or the odd one of a tie. Only
/// then is the exact decimal expansion consulted.
fn shortest(value: Float) -> (Vec<u8>, i32) {
    let text = match value {
        Float::F4(v) => format!("{:e}", v.abs()),
        Float::F8(v) => format!("{:e}", v.abs()),
    };
    let (digits, exponent) = split_scientific(&text);
    if may_differ_from_postgres(value, &digits, exponent) {
        if let Some(found) = shortest_strictly_inside(value, digits.len()) {
            return found;
        }
    }
    (digits, exponent)
}

/// Cheap tests that can only fail near an edge or a tie.
fn may_differ_from_postgres(value: Float, digits: &[u8], exponent: i32) -> bool {
    let nudge = |up: bool| nudged(digits, exponent, up, 20);
    if nudge(true).is_some_and(|(d, e)| !reads_back_as(value, &d, e))
        || nudge(false).is_some_and(|(d, e)| !reads_back_as(value, &d, e))
    {
        return true;
    }
    if digits.last().is_some_and(|d| (d - b'0') % 2 == 1) {
        // A tie: the value is exactly halfway to a neighbour.
        let mut above = digits.to_vec();
        above.push(b'5');
        let below = decrement(digits).map(|mut d| {
            d.push(b'5');
            d
        });
        return reads_back_as(value, &above, exponent)
            || below.is_some_and(|d| reads_back_as(value, &d, exponent));
    }
    false
}

/// Postgres' choice, from the value's exact decimal expansion: for each length
/// from `from_len`, the two decimals of that length around the value; of those
/// strictly inside the interval, the closer, ties to the even one.
fn shortest_strictly_inside(value: Float, from_len: usize) -> Option<(Vec<u8>, i32)> {
    let exact = match value {
        Float::F4(v) => format!("{:.200e}", v.abs()),
        Float::F8(v) => format!("{:.1100e}", v.abs()),
    };
    let (exact_digits, exponent) = split_scientific(&exact);
    for len in from_len..=17 {
        let (head, tail) = exact_digits.split_at(len.min(exact_digits.len()));
        let lower = head.to_vec();
        let (upper, upper_exponent) = increment(head, exponent);
        let inside = |d: &[u8], e: i32| reads_back_as(value, d, e) && !on_edge(value, d, e);
        let lower_inside = inside(&lower, exponent);
        let upper_inside = tail.iter().any(|d| *d != b'0') && inside(&upper, upper_exponent);
        let pick_upper = match (lower_inside, upper_inside) {
            (false, false) => continue,
            (true, false) => false,
            (false, true) => true,
            (true, true) => {
                let (first, rest) = tail.split_first()?;
                let half = *first == b'5' && rest.iter().all(|d| *d == b'0');
                if half {
                    lower.last().is_some_and(|d| (d - b'0') % 2 == 1)
                } else {
                    *first >= b'5'
                }
            }
        };
        let (mut found, found_exponent) =
            if pick_upper { (upper, upper_exponent) } else { (lower, exponent) };
        while found.len() > 1 && found.last() == Some(&b'0') {
            found.pop();
        }
        return Some((found, found_exponent));
    }
    None
}

/// Whether the decimal lies exactly on the edge of the value's rounding
/// interval: nudged by far less than any gap between the two, it reads as the
/// neighbouring float.
fn on_edge(value: Float, digits: &[u8], exponent: i32) -> bool {
    [true, false].into_iter().any(|up| {
        nudged(digits, exponent, up, 1200).is_some_and(|(d, e)| !reads_back_as(value, &d, e))
    })
}

/// The decimal moved up or down by one unit `places` digits past its last.
fn nudged(digits: &[u8], exponent: i32, up: bool, places: usize) -> Option<(Vec<u8>, i32)> {
    if up {
        let mut d = digits.to_vec();
        d.resize(digits.len() + places, b'0');
        d.push(b'1');
        Some((d, exponent))
    } else {
        let mut d = decrement(digits)?;
        d.resize(digits.len() + places + 1, b'9');
        Some((d, exponent))
    }
}

/// One unit less in the last place (a leading zero may appear); `None` for 0.
fn decrement(digits: &[u8]) -> Option<Vec<u8>> {
    let mut d = digits.to_vec();
    for digit in d.iter_mut().rev() {
        if *digit == b'0' {
            *digit = b'9';
        } else {
            *digit -= 1;
            return Some(d);
        }
    }
    None
}

/// One unit more in the last place, carrying into a new leading digit.
fn increment(digits: &[u8], exponent: i32) -> (Vec<u8>, i32) {
    let mut d = digits.to_vec();
    for digit in d.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return (d, exponent);
        }
    }
    d.insert(0, b'1');
    d.pop();
    (d, exponent + 1)
}

/// `"1.25e-7"` → (`"125"`, -7).
fn split_scientific(text: &str) -> (Vec<u8>, i32) {
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    let digits = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    (digits, exponent.parse().unwrap_or(0))
}

fn reads_back_as(value: Float, digits: &[u8], exponent: i32) -> bool {
    let (first, rest) = digits.split_at(1.min(digits.len()));
    let text =
        format!("{}.{}e{exponent}", String::from_utf8_lossy(first), String::from_utf8_lossy(rest));
    match value {
        Float::F4(v) => text.parse::<f32>().is_ok_and(|p| p == v.abs()),
        Float::F8(v) => text.parse::<f64>().is_ok_and(|p| p == v.abs()),
    }
}
