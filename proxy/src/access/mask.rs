//! Masks (the seed's `data_masking_rules`): what a `masked` role sees in
//! place of a value. Each works on the value's text form, as the client would
//! have seen it unmasked, and its result is sent as text.

use pgwarden_config::Mask;

/// Writes the mask of `text` into `out` (cleared first); false when the
/// masked value is NULL. `hash` gives the keyed hash of a text, for
/// [`Mask::Hash`]; without a key to hash with, the value is NULL.
pub fn apply(
    mask: &Mask,
    text: &[u8],
    hash: impl FnOnce(&[u8]) -> Option<[u8; 32]>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    // Valid UTF-8 (every value of a text type) is borrowed as it is.
    let s = match std::str::from_utf8(text) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(text),
    };
    // Characters are bytes in ASCII text, the common case: no walk needed.
    let ascii = s.is_ascii();
    let chars = || if ascii { s.len() } else { s.chars().count() };
    // Byte offset of the character `n` characters in (or the end).
    let at = |n: usize| {
        if ascii {
            n.min(s.len())
        } else {
            s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
        }
    };
    match mask {
        Mask::Null => return false,
        Mask::Redact(t) => out.extend_from_slice(t.as_bytes()),
        Mask::Hash => {
            let Some(digest) = hash(text) else { return false };
            crate::hex::encode_into(&digest, out);
        }
        Mask::Partial { prefix, pad, suffix } => {
            let n = chars();
            if n > prefix + suffix {
                out.extend_from_slice(&s.as_bytes()[..at(*prefix)]);
                out.extend_from_slice(pad.as_bytes());
                out.extend_from_slice(&s.as_bytes()[at(n - suffix)..]);
            } else {
                out.extend_from_slice(pad.as_bytes());
            }
        }
        Mask::Last4 => {
            let n = chars();
            let hidden = if n <= 4 { n } else { n - 4 };
            out.resize(hidden, b'*');
            out.extend_from_slice(&s.as_bytes()[at(hidden)..]);
        }
        Mask::Email => match s.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => {
                let first = local.chars().next().map_or(0, char::len_utf8);
                out.extend_from_slice(&local.as_bytes()[..first]);
                out.extend_from_slice(b"***@");
                out.extend_from_slice(domain.as_bytes());
            }
            _ => out.extend_from_slice(b"***"),
        },
        Mask::Year => year(&s, out),
        Mask::Round(places) => round(&s, *places, out),
    }
    true
}

/// `2024-03-05 10:00:00+00` → `2024`; `0044-03-15 BC` → `0044 BC`;
/// `infinity` stays.
fn year(s: &str, out: &mut Vec<u8>) {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.extend_from_slice(digits.as_bytes());
    if s.ends_with(" BC") {
        out.extend_from_slice(b" BC");
    }
}

/// Rounds a number's text to `places` decimal places, half away from zero,
/// as Postgres' `round(numeric, int)` does; exactly, on the digits. A float
/// in exponent form goes through f64; NaN and infinities stay.
fn round(s: &str, places: i32, out: &mut Vec<u8>) {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let plain = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !plain {
        // A float in exponent form: its exact decimal expansion, rounded.
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() => round(&format!("{x}"), places, out),
            _ => out.extend_from_slice(s.as_bytes()),
        }
        return;
    }
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let mut point = int.len() as i64;
    let keep = point + i64::from(places);
    if keep < 0 {
        digits.clear();
    } else if (keep as usize) < digits.len() {
        let keep = keep as usize;
        let up = digits[keep] >= 5;
        digits.truncate(keep);
        if up {
            let mut i = keep;
            loop {
                if i == 0 {
                    digits.insert(0, 1);
                    point += 1;
                    break;
                }
                i -= 1;
                if digits[i] == 9 {
                    digits[i] = 0;
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
    }
    // Digits dropped from the integer part become zeros.
    while (digits.len() as i64) < point {
        digits.push(0);
    }
    let point = point as usize;
    let (int, frac) = digits.split_at(point);
    let int: Vec<u8> = int.iter().skip_while(|d| **d == 0).map(|d| b'0' + d).collect();
    let wanted = places.max(0) as usize;
    let mut frac: Vec<u8> = frac.iter().map(|d| b'0' + d).collect();
    frac.resize(wanted, b'0');
    let zero = int.is_empty() && frac.iter().all(|d| *d == b'0');
    if negative && !zero {
        out.push(b'-');
    }
    if int.is_empty() {
        out.push(b'0');
    }
    out.extend_from_slice(&int);
    if !frac.is_empty() {
        out.push(b'.');
        out.extend_from_slice(&frac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(mask: &str, text: &str) -> Option<String> {
        let mask = Mask::parse(mask).unwrap();
        let mut out = Vec::new();
        let present = apply(&mask, text.as_bytes(), |t| Some([t.len() as u8; 32]), &mut out);
        present.then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn partial_keeps_prefix_and_suffix_around_the_pad() {
        assert_eq!(masked("partial(0, '***-**-', 4)", "123-45-6789").unwrap(), "***-**-6789");
        assert_eq!(masked("partial(2, '..', 1)", "héllo").unwrap(), "hé..o");
        // Too short to show anything without showing all of it.
        assert_eq!(masked("partial(2, 'xx', 2)", "abcd").unwrap(), "xx");
    }

    #[test]
    fn last4_email_redact_null_and_hash() {
        assert_eq!(masked("last4", "4111111111111111").unwrap(), "************1111");
        assert_eq!(masked("last4", "1234").unwrap(), "****");
        assert_eq!(masked("last4", "12").unwrap(), "**");
        assert_eq!(masked("email", "john.doe@example.com").unwrap(), "j***@example.com");
        assert_eq!(masked("email", "not an address").unwrap(), "***");
        assert_eq!(masked("redact('[hidden]')", "secret").unwrap(), "[hidden]");
        assert_eq!(masked("null", "secret"), None);
        assert_eq!(masked("hash", "abc").unwrap(), "03".repeat(32));
    }

    #[test]
    fn year_of_dates_and_timestamps() {
        assert_eq!(masked("year", "1984-06-01").unwrap(), "1984");
        assert_eq!(masked("year", "2026-12-04 10:00:00+00").unwrap(), "2026");
        assert_eq!(masked("year", "0044-03-15 BC").unwrap(), "0044 BC");
        assert_eq!(masked("year", "infinity").unwrap(), "infinity");
    }

    #[test]
    fn round_is_exact_on_decimal_text_and_rounds_half_away_from_zero() {
        assert_eq!(masked("round(0)", "52345.5").unwrap(), "52346");
        assert_eq!(masked("round(-3)", "52345").unwrap(), "52000");
        assert_eq!(masked("round(-3)", "52500").unwrap(), "53000");
        assert_eq!(masked("round(-3)", "-999.9").unwrap(), "-1000");
        assert_eq!(masked("round(-3)", "-12").unwrap(), "0");
        assert_eq!(masked("round(2)", "1.005").unwrap(), "1.01");
        assert_eq!(masked("round(2)", "1.5").unwrap(), "1.50");
        assert_eq!(masked("round(1)", "99.96").unwrap(), "100.0");
        assert_eq!(masked("round(-6)", "123").unwrap(), "0");
        assert_eq!(
            masked("round(2)", "123456789012345678901234567890.125").unwrap(),
            "123456789012345678901234567890.13"
        );
        assert_eq!(masked("round(-3)", "1.5e-07").unwrap(), "0");
        assert_eq!(masked("round(-3)", "2.5e+04").unwrap(), "25000");
        assert_eq!(masked("round(1)", "NaN").unwrap(), "NaN");
        assert_eq!(masked("round(0)", "-Infinity").unwrap(), "-Infinity");
    }
}
