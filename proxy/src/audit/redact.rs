//! Statement text for the audit log: literals replaced by placeholders,
//! comments dropped, whitespace collapsed, and a multi-statement Query split
//! into its statements; the fingerprint is a hash of that normalised text.
//!
//! A small hand-written lexer rather than the SQL parser: it runs for every
//! statement the audit log records, allocates only the text it returns, and
//! never fails (untrusted text is at worst normalised oddly, never panics).

use std::ops::Range;

use sha2::{Digest, Sha256};

/// One statement of a Query or Parse, as the audit log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    pub text: String,
    /// First 8 bytes of SHA-256 of `text` (ASCII lowercased), in hex.
    pub fingerprint: String,
}

/// What to do with a literal at a given byte range of the original text.
pub struct Literals<'a> {
    /// Keep literals (`statement_literals = "all"`)...
    pub keep: bool,
    /// ...except those starting inside one of these ranges (literals bound
    /// for encrypted columns); `None`: unknown, so every literal is replaced.
    pub encrypted: Option<&'a [Range<usize>]>,
}

impl Literals<'_> {
    /// Every literal replaced.
    pub const REDACT: Literals<'static> = Literals { keep: false, encrypted: None };

    /// Whether the literal at `token` is kept: no encrypted site overlaps it.
    fn keeps(&self, token: &Range<usize>) -> bool {
        self.keep
            && self.encrypted.is_some_and(|ranges| {
                !ranges.iter().any(|r| r.start < token.end && token.start < r.end)
            })
    }
}

/// The statements of `sql`, normalised. An empty or comment-only text gives
/// no statement.
pub fn statements(sql: &str, literals: &Literals<'_>) -> Vec<Normalised> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut placeholder = max_placeholder(sql);
    let b = sql.as_bytes();
    let mut i = 0;
    // Whether a space is owed before the next token.
    let mut space = false;
    let push = |cur: &mut String, space: &mut bool, s: &str| {
        if *space && !cur.is_empty() {
            cur.push(' ');
        }
        *space = false;
        cur.push_str(s);
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                space = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                space = true;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Postgres' block comments nest.
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                space = true;
            }
            b';' => {
                finish(&mut cur, &mut out);
                space = false;
                placeholder = max_placeholder(sql);
                i += 1;
            }
            b'\'' => {
                i = quoted(b, i + 1, b'\'', false);
                literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
            }
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') && !ident_before(b, i) => {
                i = quoted(b, i + 2, b'\'', true);
                literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N'
                if b.get(i + 1) == Some(&b'\'') && !ident_before(b, i) =>
            {
                i = quoted(b, i + 2, b'\'', false);
                literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
            }
            b'u' | b'U'
                if b.get(i + 1) == Some(&b'&')
                    && b.get(i + 2) == Some(&b'\'')
                    && !ident_before(b, i) =>
            {
                i = quoted(b, i + 3, b'\'', false);
                literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
            }
            b'"' => {
                i = quoted(b, i + 1, b'"', false);
                push(&mut cur, &mut space, &sql[start..i]);
            }
            b'$' if !ident_before(b, i) => match dollar_tag(b, i) {
                Some(tag_len) => {
                    let tag = &b[i..i + tag_len];
                    let mut j = i + tag_len;
                    i = b.len();
                    while j + tag_len <= b.len() {
                        if &b[j..j + tag_len] == tag {
                            i = j + tag_len;
                            break;
                        }
                        j += 1;
                    }
                    literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
                }
                None => {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    push(&mut cur, &mut space, &sql[start..i]);
                }
            },
            b'0'..=b'9' if !ident_before(b, i) => {
                i = number(b, i);
                literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !ident_before(b, i) => {
                i = number(b, i + 1);
                literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
            }
            c if is_ident(c) || c >= 0x80 => {
                while i < b.len() && (is_ident(b[i]) || b[i] >= 0x80) {
                    i += 1;
                }
                let word = &sql[start..i];
                // A bool literal may be bound for an encrypted column too.
                if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
                    literal(&mut cur, &mut space, sql, start..i, literals, &mut placeholder);
                } else {
                    push(&mut cur, &mut space, word);
                }
            }
            _ => {
                // Operators and punctuation: one ASCII byte at a time.
                i += 1;
                push(&mut cur, &mut space, &sql[start..i]);
            }
        }
    }
    finish(&mut cur, &mut out);
    out
}

/// The fingerprint of already normalised text.
pub fn fingerprint(text: &str) -> String {
    let mut h = Sha256::new();
    for chunk in text.as_bytes().chunks(256) {
        let mut lower = [0u8; 256];
        let lower = &mut lower[..chunk.len()];
        lower.copy_from_slice(chunk);
        lower.make_ascii_lowercase();
        h.update(&*lower);
    }
    super::chain::hex(&h.finalize()[..8])
}

fn finish(cur: &mut String, out: &mut Vec<Normalised>) {
    if !cur.is_empty() {
        let text = std::mem::take(cur);
        let fingerprint = fingerprint(&text);
        out.push(Normalised { text, fingerprint });
    }
}

fn literal(
    cur: &mut String,
    space: &mut bool,
    sql: &str,
    range: Range<usize>,
    literals: &Literals<'_>,
    placeholder: &mut u32,
) {
    if *space && !cur.is_empty() {
        cur.push(' ');
    }
    *space = false;
    if literals.keeps(&range) {
        cur.push_str(sql.get(range).unwrap_or_default());
    } else {
        *placeholder = placeholder.saturating_add(1);
        cur.push('$');
        cur.push_str(&placeholder.to_string());
    }
}

/// The highest `$N` parameter in `sql` (approximate: a `$N` inside a string
/// counts too, which only makes placeholders start higher).
fn max_placeholder(sql: &str) -> u32 {
    let b = sql.as_bytes();
    let mut max = 0u32;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && !ident_before(b, i) {
            let mut n = 0u32;
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                n = n.saturating_mul(10).saturating_add(u32::from(b[j] - b'0'));
                j += 1;
            }
            max = max.max(n);
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && b.get(i - 1).is_some_and(|&c| is_ident(c) || c >= 0x80)
}

/// End of a quoted token whose body starts at `i`: a doubled quote is one
/// quote; `backslash`: `\` escapes the next byte (E'' strings).
fn quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Length of the `$tag$` opening a dollar-quoted string at `i`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

fn number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let c = b[i];
        let exponent_sign = (c == b'+' || c == b'-') && matches!(b.get(i - 1), Some(b'e' | b'E'));
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> String {
        let s = statements(sql, &Literals::REDACT);
        assert_eq!(s.len(), 1, "{s:?}");
        s[0].text.clone()
    }

    #[test]
    fn literals_become_numbered_placeholders_after_the_statements_own() {
        assert_eq!(
            one("SELECT * FROM t WHERE a = 'x''y' AND b = 42 AND c = $1 AND d = E'\\'q' AND e = -1.5e-3"),
            "SELECT * FROM t WHERE a = $2 AND b = $3 AND c = $1 AND d = $4 AND e = -$5"
        );
        assert_eq!(one("select $tag$ secret; $x$ $tag$, $$ two $$, true"), "select $1, $2, $3");
        assert_eq!(
            one("SELECT t1.c2, \"Quoted 'id'\" FROM t1"),
            "SELECT t1.c2, \"Quoted 'id'\" FROM t1"
        );
    }

    #[test]
    fn comments_and_whitespace_do_not_change_the_fingerprint() {
        let a = statements("SELECT  1 -- hello 'secret'\n", &Literals::REDACT);
        let b = statements("/* a /* nested */ 'x' */ select\n2", &Literals::REDACT);
        assert_eq!(a[0].text, "SELECT $1");
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_eq!(a[0].fingerprint.len(), 16);
    }

    #[test]
    fn a_multi_statement_query_gives_one_statement_each() {
        let s = statements("BEGIN; INSERT INTO t VALUES (1, ';'); ; COMMIT;", &Literals::REDACT);
        let texts: Vec<_> = s.iter().map(|n| n.text.as_str()).collect();
        assert_eq!(texts, ["BEGIN", "INSERT INTO t VALUES ($1, $2)", "COMMIT"]);
        assert!(statements(" -- nothing\n ; ", &Literals::REDACT).is_empty());
    }

    #[test]
    fn all_keeps_literals_except_those_bound_for_encrypted_columns() {
        let sql = "INSERT INTO c (name, ssn) VALUES ('Ann', '123-45-6789')";
        let at = sql.find("'123").unwrap();
        let ranges = vec![Range { start: at, end: at + 13 }];
        let keep = Literals { keep: true, encrypted: Some(&ranges) };
        let s = statements(sql, &keep);
        assert_eq!(s[0].text, "INSERT INTO c (name, ssn) VALUES ('Ann', $1)");
        // Unknown sites: nothing kept.
        let unknown = Literals { keep: true, encrypted: None };
        assert!(!statements(sql, &unknown)[0].text.contains("Ann"));
    }

    #[test]
    fn untrusted_text_never_panics() {
        for sql in ["'", "E'\\", "$a$ unterminated", "/* open", "$", "1e", "x'", "é'ü'", "--", ".5"]
        {
            let _ = statements(sql, &Literals::REDACT);
            let _ = statements(sql, &Literals { keep: true, encrypted: Some(&[]) });
        }
        assert_eq!(one("é = 'ü'"), "é = $1");
    }
}
