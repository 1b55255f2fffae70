//! date, timestamp and timestamptz, with Postgres' binary forms: days (i32) and
//! microseconds (i64) since 2000-01-01, the extremes of each standing for
//! `-infinity` and `infinity`.
//!
//! Text input is ISO 8601 as Postgres reads it (`2024-01-31`, `2024-01-31
//! 13:45:00.5`, `T` or space, ` BC`, `epoch`, `infinity`); other DateStyles and
//! words (`today`, `now`, month names) are refused rather than guessed. A
//! timestamptz must carry an offset (`Z`, `UTC`, `GMT`, `+02`, `-05:30`,
//! `+0530`): the session's TimeZone is not known here. A timestamp ignores an
//! offset and a date ignores a time, as Postgres does. More than six fractional
//! digits round to microseconds as Postgres does (`rint` of the
//! fraction read as a double).
//!
//! Output is Postgres' ISO style with the session in UTC: `2024-01-31
//! 13:45:00.5`, timestamptz with `+00`, years before 1 AD as `0044-03-15 BC`.

use super::scalar::{is_space, trim_space};
use super::Reason;

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 (the civil algorithms' epoch) to 2000-01-01 (Postgres').
const UNIX_TO_PG_DAYS: i64 = 10_957;
/// The first valid date, 4714-11-24 BC (Julian day 0), in days since 2000.
const MIN_DAY: i64 = -2_451_545;
/// One past the last valid date, 5874898-01-01 (`DATE_END_JULIAN`).
const END_DAY: i64 = 2_145_031_949;
/// The first valid timestamp, 4714-11-24 00:00:00 BC (`MIN_TIMESTAMP`).
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// One past the last valid timestamp, 294277-01-01 00:00:00 (`END_TIMESTAMP`).
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
/// Postgres' limit on a numeric UTC offset (`MAX_TZDISP_HOUR`).
const MAX_OFFSET_HOURS: i64 = 15;

const SYNTAX: Reason = "invalid date/time syntax; write ISO 8601, e.g. 2024-01-31 13:45:00";
const FIELD: Reason = "date/time field value out of range";
const RANGE: Reason = "date/time value out of range for the type";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Date,
    Timestamp,
    Timestamptz,
}

/// Days (date) or microseconds (timestamps) since 2000-01-01, or an infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    NegInfinity,
    Infinity,
    At(i64),
}

pub(super) fn canonical_text(kind: Kind, input: &[u8]) -> Result<Vec<u8>, Reason> {
    let mut out = Vec::with_capacity(32);
    write(kind, parse(kind, input)?, &mut out);
    Ok(out)
}

pub(super) fn canonical_binary(kind: Kind, input: &[u8]) -> Result<Vec<u8>, Reason> {
    let value = match kind {
        Kind::Date => {
            let bytes: [u8; 4] = input.try_into().map_err(|_| "a binary date is 4 bytes")?;
            match i32::from_be_bytes(bytes) {
                i32::MIN => Value::NegInfinity,
                i32::MAX => Value::Infinity,
                days => Value::At(check_range(kind, i64::from(days))?),
            }
        }
        Kind::Timestamp | Kind::Timestamptz => {
            let bytes: [u8; 8] = input.try_into().map_err(|_| "a binary timestamp is 8 bytes")?;
            match i64::from_be_bytes(bytes) {
                i64::MIN => Value::NegInfinity,
                i64::MAX => Value::Infinity,
                usecs => Value::At(check_range(kind, usecs)?),
            }
        }
    };
    let mut out = Vec::with_capacity(32);
    write(kind, value, &mut out);
    Ok(out)
}

pub(super) fn to_binary(kind: Kind, canonical: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    let value = parse(kind, canonical)?;
    match kind {
        Kind::Date => {
            let days = match value {
                Value::NegInfinity => i32::MIN,
                Value::Infinity => i32::MAX,
                Value::At(days) => i32::try_from(days).map_err(|_| RANGE)?,
            };
            out.extend_from_slice(&days.to_be_bytes());
        }
        Kind::Timestamp | Kind::Timestamptz => {
            let usecs = match value {
                Value::NegInfinity => i64::MIN,
                Value::Infinity => i64::MAX,
                Value::At(usecs) => usecs,
            };
            out.extend_from_slice(&usecs.to_be_bytes());
        }
    }
    Ok(())
}

fn check_range(kind: Kind, value: i64) -> Result<i64, Reason> {
    let ok = match kind {
        Kind::Date => (MIN_DAY..END_DAY).contains(&value),
        Kind::Timestamp | Kind::Timestamptz => (MIN_TIMESTAMP..END_TIMESTAMP).contains(&value),
    };
    if ok {
        Ok(value)
    } else {
        Err(RANGE)
    }
}

/// Reads fields off the front of the input.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        match self.0 {
            [first, rest @ ..] if first.eq_ignore_ascii_case(&b) => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn eat_word(&mut self, word: &[u8]) -> bool {
        match self.0.split_at_checked(word.len()) {
            Some((head, rest)) if head.eq_ignore_ascii_case(word) => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Reason> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(SYNTAX)
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.0 = self.0.get(1..).unwrap_or_default();
        }
    }

    /// A run of `min..=max` digits.
    fn number(&mut self, min: usize, max: usize) -> Result<i64, Reason> {
        let len = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        if len < min || len > max {
            return Err(SYNTAX);
        }
        let (digits, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(digits.iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
    }
}

fn parse(kind: Kind, input: &[u8]) -> Result<Value, Reason> {
    let s = trim_space(input);
    if s.eq_ignore_ascii_case(b"infinity") || s.eq_ignore_ascii_case(b"+infinity") {
        return Ok(Value::Infinity);
    }
    if s.eq_ignore_ascii_case(b"-infinity") {
        return Ok(Value::NegInfinity);
    }
    if s.eq_ignore_ascii_case(b"epoch") {
        let days = -UNIX_TO_PG_DAYS;
        return Ok(Value::At(if kind == Kind::Date { days } else { days * USECS_PER_DAY }));
    }
    let mut cur = Cursor(s);
    // A year of one or two digits would be read by Postgres per DateStyle
    // (`12-10-11` is 2011-12-10 under MDY); refuse rather than guess.
    let year = cur.number(3, 7)?;
    cur.expect(b'-')?;
    let month = cur.number(1, 2)?;
    cur.expect(b'-')?;
    let day = cur.number(1, 2)?;

    let before_separator = cur.0.len();
    cur.skip_spaces();
    let t = cur.eat(b'T');
    let mut usecs_of_day = 0;
    if (t || cur.0.len() < before_separator) && cur.peek().is_some_and(|b| b.is_ascii_digit()) {
        usecs_of_day = parse_time(&mut cur)?;
    } else if t {
        return Err(SYNTAX);
    }
    cur.skip_spaces();
    let mut offset = None;
    if matches!(cur.peek(), Some(b'+' | b'-' | b'Z' | b'z' | b'U' | b'u' | b'G' | b'g')) {
        offset = Some(parse_offset(&mut cur)?);
        cur.skip_spaces();
    }
    let bc = cur.eat_word(b"BC");
    if !bc {
        cur.eat_word(b"AD");
    }
    cur.skip_spaces();
    if !cur.0.is_empty() {
        return Err(SYNTAX);
    }

    if year == 0 || !(1..=12).contains(&month) {
        return Err(FIELD);
    }
    let year = if bc { 1 - year } else { year };
    if day < 1 || day > days_in_month(year, month) {
        return Err(FIELD);
    }
    let days = days_from_civil(year, month, day);
    let value = match kind {
        Kind::Date => days,
        Kind::Timestamp | Kind::Timestamptz => {
            let offset = match (kind, offset) {
                (Kind::Timestamptz, None) => {
                    return Err("a timestamptz needs an explicit UTC offset, e.g. \
                                2024-01-31 13:45:00+00 or ...Z")
                }
                (Kind::Timestamptz, Some(offset)) => offset,
                _ => 0,
            };
            days.checked_mul(USECS_PER_DAY)
                .and_then(|u| u.checked_add(usecs_of_day))
                .and_then(|u| u.checked_sub(offset * 1_000_000))
                .ok_or(RANGE)?
        }
    };
    check_range(kind, value).map(Value::At)
}

/// `H[H]:MM[:SS[.fraction]]` as microseconds since midnight; `24:00:00` and a
/// leap second `:60` are accepted and roll over, as in Postgres.
fn parse_time(cur: &mut Cursor<'_>) -> Result<i64, Reason> {
    let hour = cur.number(1, 2)?;
    cur.expect(b':')?;
    let minute = cur.number(2, 2)?;
    let mut second = 0;
    let mut fraction = 0;
    if cur.eat(b':') {
        second = cur.number(2, 2)?;
        if cur.0.first() == Some(&b'.') {
            let len = 1 + cur.0.iter().skip(1).take_while(|b| b.is_ascii_digit()).count();
            let (digits, rest) = cur.0.split_at(len);
            cur.0 = rest;
            // As Postgres: the fraction read as a double, then `rint(frac * 1e6)`.
            let text = std::str::from_utf8(digits).map_err(|_| SYNTAX)?;
            // `13:45:00.` is accepted, as by Postgres.
            let frac: f64 = if text == "." { 0.0 } else { text.parse().map_err(|_| SYNTAX)? };
            fraction = (frac * 1_000_000.0).round_ties_even() as i64;
        }
    }
    if hour > 24
        || minute > 59
        || second > 60
        || (hour == 24 && (minute, second, fraction) != (0, 0, 0))
    {
        return Err(FIELD);
    }
    Ok(((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction)
}

/// `Z`, `UTC`, `GMT`, or a sign and `H`, `HH`, `HH:MM`, `HH:MM:SS`, `HHMM`,
/// `HHMMSS`; seconds east of UTC.
fn parse_offset(cur: &mut Cursor<'_>) -> Result<i64, Reason> {
    if cur.eat(b'Z') || cur.eat_word(b"UTC") || cur.eat_word(b"GMT") {
        return Ok(0);
    }
    let negative = match cur.peek() {
        Some(b'+') => false,
        Some(b'-') => true,
        _ => return Err(SYNTAX),
    };
    cur.0 = cur.0.get(1..).unwrap_or_default();
    let len = cur.0.iter().take_while(|b| b.is_ascii_digit()).count();
    let (hours, minutes, seconds) = match len {
        1 | 2 => {
            let hours = cur.number(1, 2)?;
            let (mut minutes, mut seconds) = (0, 0);
            if cur.eat(b':') {
                minutes = cur.number(2, 2)?;
                if cur.eat(b':') {
                    seconds = cur.number(2, 2)?;
                }
            }
            (hours, minutes, seconds)
        }
        4 => {
            let hhmm = cur.number(4, 4)?;
            (hhmm / 100, hhmm % 100, 0)
        }
        6 => {
            let hhmmss = cur.number(6, 6)?;
            (hhmmss / 10_000, hhmmss / 100 % 100, hhmmss % 100)
        }
        _ => return Err(SYNTAX),
    };
    if hours > MAX_OFFSET_HOURS || minutes > 59 || seconds > 59 {
        return Err(FIELD);
    }
    let offset = (hours * 60 + minutes) * 60 + seconds;
    Ok(if negative { -offset } else { offset })
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 2000-01-01 of a proleptic Gregorian date with astronomical year
/// numbering (1 BC is year 0). Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - UNIX_TO_PG_DAYS
}

/// (year, month, day) of a count of days since 1970-01-01: what the audit
/// log's timestamps are written from.
pub(crate) fn civil_from_unix_days(days: i64) -> (i64, i64, i64) {
    civil_from_days(days - UNIX_TO_PG_DAYS)
}

/// The inverse of [`days_from_civil`]: (astronomical year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + UNIX_TO_PG_DAYS + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn write(kind: Kind, value: Value, out: &mut Vec<u8>) {
    let at = match value {
        Value::NegInfinity => return out.extend_from_slice(b"-infinity"),
        Value::Infinity => return out.extend_from_slice(b"infinity"),
        Value::At(at) => at,
    };
    let (days, usecs) = match kind {
        Kind::Date => (at, None),
        Kind::Timestamp | Kind::Timestamptz => {
            (at.div_euclid(USECS_PER_DAY), Some(at.rem_euclid(USECS_PER_DAY)))
        }
    };
    let (year, month, day) = civil_from_days(days);
    let bc = year <= 0;
    let shown_year = if bc { 1 - year } else { year };
    let mut text = format!("{shown_year:04}-{month:02}-{day:02}");
    if let Some(usecs) = usecs {
        let seconds = usecs / 1_000_000;
        let fraction = usecs % 1_000_000;
        text.push_str(&format!(
            " {:02}:{:02}:{:02}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        ));
        if fraction != 0 {
            let digits = format!("{fraction:06}");
            text.push('.');
            text.push_str(digits.trim_end_matches('0'));
        }
        if kind == Kind::Timestamptz {
            text.push_str("+00");
        }
    }
    if bc {
        text.push_str(" BC");
    }
    out.extend_from_slice(text.as_bytes());
}
