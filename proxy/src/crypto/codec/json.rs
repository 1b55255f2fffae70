//! json and jsonb. json keeps its text (after checking it is JSON, as Postgres
//! does); jsonb is re-written the way Postgres prints it, so that equal jsonb
//! values have one canonical text:
//!
//! - object keys ordered by length, then bytewise; of duplicate keys the last
//!   one wins;
//! - `", "` between elements, `": "` after keys, no other whitespace;
//! - numbers as Postgres numeric prints them (`1e2` → `100`, `1.50` stays
//!   `1.50`: jsonb keeps a number's scale);
//! - strings with Postgres' escapes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`,
//!   `\u00XX` for other control characters), everything else as UTF-8;
//!   `\u0000` is refused, as Postgres does for jsonb.
//!
//! Nesting deeper than [`MAX_DEPTH`] is refused, so hostile input cannot
//! exhaust the stack.

use super::numeric;
use super::Reason;

/// The version byte that starts jsonb's binary form.
pub(super) const JSONB_VERSION: u8 = 1;
/// Deepest nesting of arrays and objects accepted.
pub(super) const MAX_DEPTH: usize = 1000;

const SYNTAX: Reason = "invalid JSON syntax";

enum Value {
    Null,
    Bool(bool),
    /// Postgres numeric text, scale kept.
    Number(Vec<u8>),
    String(String),
    Array(Vec<Value>),
    /// Sorted by (length, bytes) and without duplicate keys.
    Object(Vec<(String, Value)>),
}

/// Checks that `input` is one JSON value (json input).
pub(super) fn validate(input: &[u8]) -> Result<(), Reason> {
    Parser::new(input, false)?.document().map(drop)
}

/// The canonical (Postgres output) text of jsonb text input.
pub(super) fn canonical_jsonb(input: &[u8]) -> Result<Vec<u8>, Reason> {
    let value = Parser::new(input, true)?.document()?;
    let mut out = Vec::with_capacity(input.len());
    write(&value, &mut out);
    Ok(out)
}

/// The text inside jsonb's binary form: a version byte (1), then the text.
pub(super) fn jsonb_binary_text(input: &[u8]) -> Result<&[u8], Reason> {
    match input {
        [JSONB_VERSION, text @ ..] => Ok(text),
        _ => Err("unsupported binary jsonb version; expected 1"),
    }
}

struct Parser<'a> {
    rest: &'a [u8],
    /// jsonb: numbers become numeric, objects are normalised, `\u0000` refused.
    jsonb: bool,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8], jsonb: bool) -> Result<Self, Reason> {
        std::str::from_utf8(input).map_err(|_| "not valid UTF-8")?;
        Ok(Self { rest: input, jsonb, depth: 0 })
    }

    fn document(mut self) -> Result<Value, Reason> {
        let value = self.value()?;
        self.skip_whitespace();
        if self.rest.is_empty() {
            Ok(value)
        } else {
            Err(SYNTAX)
        }
    }

    fn skip_whitespace(&mut self) {
        while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = self.rest {
            self.rest = rest;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn next(&mut self) -> Option<u8> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*first)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.rest = self.rest.get(1..).unwrap_or_default();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, Reason> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.literal(),
            None => Err("empty JSON value"),
        }
    }

    fn nested(&mut self, parse: fn(&mut Self) -> Result<Value, Reason>) -> Result<Value, Reason> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("JSON nested too deeply");
        }
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn array(&mut self) -> Result<Value, Reason> {
        self.eat(b'[');
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_whitespace();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => return Ok(Value::Array(items)),
                _ => return Err(SYNTAX),
            }
        }
    }

    fn object(&mut self) -> Result<Value, Reason> {
        self.eat(b'{');
        let mut pairs = Vec::new();
        self.skip_whitespace();
        if !self.eat(b'}') {
            loop {
                self.skip_whitespace();
                if self.peek() != Some(b'"') {
                    return Err(SYNTAX);
                }
                let key = self.string()?;
                self.skip_whitespace();
                if !self.eat(b':') {
                    return Err(SYNTAX);
                }
                pairs.push((key, self.value()?));
                self.skip_whitespace();
                match self.next() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => return Err(SYNTAX),
                }
            }
        }
        if self.jsonb {
            // Stable, so equal keys stay in input order and the last is kept.
            pairs.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            let mut unique: Vec<(String, Value)> = Vec::with_capacity(pairs.len());
            for pair in pairs {
                match unique.last_mut() {
                    Some(last) if last.0 == pair.0 => *last = pair,
                    _ => unique.push(pair),
                }
            }
            pairs = unique;
        }
        Ok(Value::Object(pairs))
    }

    fn literal(&mut self) -> Result<Value, Reason> {
        for (word, value) in [
            (&b"true"[..], Value::Bool(true)),
            (b"false", Value::Bool(false)),
            (b"null", Value::Null),
        ] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(value);
            }
        }
        Err(SYNTAX)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, Reason> {
        let start = self.rest;
        self.eat(b'-');
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(SYNTAX),
        }
        if self.eat(b'.') {
            self.require_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.require_digits()?;
        }
        let text = start.get(..start.len() - self.rest.len()).unwrap_or_default();
        if !self.jsonb {
            return Ok(Value::Null);
        }
        let mut out = Vec::with_capacity(text.len());
        numeric::parse_text(text)?.write(&mut out);
        Ok(Value::Number(out))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.rest = self.rest.get(1..).unwrap_or_default();
        }
    }

    fn require_digits(&mut self) -> Result<(), Reason> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(SYNTAX);
        }
        self.digits();
        Ok(())
    }

    fn string(&mut self) -> Result<String, Reason> {
        self.eat(b'"');
        let mut out = Vec::new();
        loop {
            match self.next().ok_or("unterminated JSON string")? {
                b'"' => break,
                b'\\' => {
                    let escaped = match self.next().ok_or(SYNTAX)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err("invalid escape in JSON string"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                }
                b if b < 0x20 => return Err("control characters in JSON strings must be escaped"),
                b => out.push(b),
            }
        }
        // The input is UTF-8 and escapes add whole characters.
        String::from_utf8(out).map_err(|_| "not valid UTF-8")
    }

    /// After `\u`: four hex digits, a surrogate pair joined into one character.
    /// json only checks the digits (its text is kept as sent, and Postgres
    /// accepts lone surrogates there); the character is then a placeholder.
    fn unicode_escape(&mut self) -> Result<char, Reason> {
        const BAD: Reason = "invalid Unicode escape in JSON string";
        let high = self.hex4().ok_or(BAD)?;
        if !self.jsonb {
            return Ok(char::REPLACEMENT_CHARACTER);
        }
        let code = match high {
            0xD800..=0xDBFF => {
                if !(self.eat(b'\\') && self.eat(b'u')) {
                    return Err(BAD);
                }
                let low = self.hex4().ok_or(BAD)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(BAD);
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(BAD),
            0 if self.jsonb => return Err("\\u0000 cannot be stored in jsonb"),
            code => code,
        };
        char::from_u32(code).ok_or(BAD)
    }

    fn hex4(&mut self) -> Option<u32> {
        let mut code = 0;
        for _ in 0..4 {
            code = code * 16 + char::from(self.next()?).to_digit(16)?;
        }
        Some(code)
    }
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(text) => out.extend_from_slice(text),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(pairs) => {
            out.push(b'{');
            for (i, (key, item)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_string(key, out);
                out.extend_from_slice(b": ");
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Postgres' `escape_json`.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
}
