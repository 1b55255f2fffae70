//! Rewriting a statement's text: literals bound for encrypted columns are
//! replaced by their envelopes as bytea literals; everything else stays byte
//! for byte as the client wrote it.

use std::fmt::Write;
use std::ops::Range;

/// `sql` with each range replaced by the bytea literal of its bytes. Ranges
/// must not overlap; they may come in any order.
pub fn replace_literals(sql: &str, mut sites: Vec<(Range<usize>, Vec<u8>)>) -> Option<String> {
    sites.sort_by_key(|(r, _)| r.start);
    let extra: usize = sites.iter().map(|(_, b)| 2 * b.len() + 16).sum();
    let mut out = String::with_capacity(sql.len() + extra);
    let mut at = 0;
    for (range, bytes) in sites {
        out.push_str(sql.get(at..range.start)?);
        out.push_str(&bytea_literal(&bytes));
        at = range.end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

/// `'\x…'::bytea`, valid whatever `standard_conforming_strings` is, since the
/// `E` prefix fixes how the backslash is read.
pub fn bytea_literal(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 * bytes.len() + 16);
    s.push_str("E'\\\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s.push_str("'::bytea");
    s
}
