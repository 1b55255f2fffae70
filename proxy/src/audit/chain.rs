//! The HMAC chain: every record carries `prev` (the MAC of the record
//! before it, 64 zeros for the first) and `mac` = HMAC-SHA256(key, the
//! record's line without its `mac` field). The line ends
//! `,"prev":"…","mac":"…"}`, so the canonical text is the line with the
//! `,"mac":"…"` cut out.
//!
//! What [`verify`] detects, across files given in any order (they are put
//! in chain order by the seq of their first record):
//! - an edited record (its MAC fails), an inserted one (no valid MAC without
//!   the key), a removed or reordered one (seq and `prev` no longer follow);
//! - a truncated tail: a log ends with a `seal` record, written at rotation
//!   (`reason` rotate, the last record of every rotated file) and at clean
//!   shutdown (`reason` shutdown). A chain that ends without a seal was cut,
//!   or its proxy crashed or still runs (`--open` accepts the latter); one
//!   that ends at a rotation seal lacks the files after it.
//!
//! Not detectable: cutting a log back to an earlier shutdown seal (a restart
//! continues the chain after it, and the cut looks like a clean end) or
//! removing all of it. Keep the last seq and MAC somewhere else (pgwarden
//! logs them at shutdown) to anchor the end.
//!
//! Old files may be removed (retention): `after` then anchors the start at
//! the seq and MAC of the last removed record, which a verify of those files
//! printed before they went; the rest must follow it exactly.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::record::{Event, Record};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    hex_into(bytes, &mut s);
    s
}

/// Appends `bytes` in lower-case hex.
fn hex_into(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// The writing end of a chain.
pub struct Chain {
    mac: Hmac<Sha256>,
    /// Seq of the last record appended.
    pub seq: u64,
    /// MAC of the last record appended.
    pub prev: String,
}

impl Chain {
    /// A chain continuing after `seq` whose MAC was `prev`; `(0, GENESIS)`
    /// starts one.
    pub fn new(key: &[u8], seq: u64, prev: String) -> Result<Self, String> {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .map_err(|_| "the audit key cannot be used as an HMAC key".to_string())?;
        Ok(Self { mac, seq, prev })
    }

    /// Appends `record` as one line (newline included) to `out`; its seq.
    pub fn append(&mut self, record: &Record, out: &mut String) -> u64 {
        self.seq += 1;
        let start = out.len();
        record.write_canonical(self.seq, &self.prev, out);
        let mut m = self.mac.clone();
        m.update(&out.as_bytes()[start..]);
        let mac = m.finalize().into_bytes();
        out.pop();
        out.push_str(",\"mac\":\"");
        let at = out.len();
        hex_into(&mac, out);
        self.prev.clear();
        self.prev.push_str(&out[at..]);
        out.push_str("\"}\n");
        self.seq
    }

    /// Whether `mac` is the MAC of `canonical`, in constant time.
    fn check(&self, canonical: &str, mac: &str) -> bool {
        let mut m = self.mac.clone();
        m.update(canonical.as_bytes());
        let expected = hex(&m.finalize().into_bytes());
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), mac.as_bytes()).into()
    }
}

/// The parts of a line the chain needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub seq: u64,
    pub event: &'a str,
    pub reason: Option<&'a str>,
    pub prev: &'a str,
    pub mac: &'a str,
    /// The line without its mac field.
    pub canonical: String,
}

/// Parses a line written by [`Chain::append`] (without its newline).
/// Structural fields are found by their unescaped quotes, which no string
/// value can contain.
pub fn parse(line: &str) -> Option<Parsed<'_>> {
    let body = line.strip_suffix("\"}")?;
    let (rest, mac) = body.rsplit_once(",\"mac\":\"")?;
    let (_, prev) = rest.rsplit_once(",\"prev\":\"")?;
    let prev = prev.strip_suffix('"')?;
    let hex64 =
        |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex64(mac) || !hex64(prev) {
        return None;
    }
    let (_, after) = line.split_once(",\"seq\":")?;
    let digits = after.split(|c: char| !c.is_ascii_digit()).next()?;
    let seq = digits.parse().ok()?;
    let (_, after) = line.split_once(",\"event\":\"")?;
    let event = after.split('"').next()?;
    let reason = line.split_once(",\"reason\":\"").and_then(|(_, after)| after.split('"').next());
    Some(Parsed { seq, event, reason, prev, mac, canonical: format!("{rest}}}") })
}

/// The chain's state after the last line of `path`, if it ends in a record:
/// how a restarted proxy continues its log.
pub fn tail(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .rev()
        .filter(|l| !l.is_empty())
        .find_map(|l| parse(l).map(|p| (p.seq, p.mac.to_string()))))
}

/// What `pgwarden audit verify` found.
#[derive(Debug)]
pub struct Verified {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_mac: String,
}

/// Checks the chain through `files` (in any order). `open`: the log may
/// still be written (its end need not be a seal). `after`: the seq and MAC of
/// the record the files follow (earlier files removed); `None` for a chain
/// from its start. The error names the first bad record by file, line and seq.
pub fn verify(
    key: &[u8],
    files: &[&Path],
    open: bool,
    after: Option<(u64, &str)>,
) -> Result<Verified, String> {
    let chain = Chain::new(key, 0, GENESIS.into())?;
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
        texts.push((f, text));
    }
    let mut parsed = Vec::with_capacity(texts.len());
    for (f, text) in &texts {
        let mut lines = Vec::new();
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let Some(line) = line.strip_suffix('\n') else {
                return Err(format!(
                    "{}:{}: the last line is incomplete (the file was cut mid-record)",
                    f.display(),
                    n + 1
                ));
            };
            let p = parse(line)
                .ok_or_else(|| format!("{}:{}: not a pgwarden audit record", f.display(), n + 1))?;
            lines.push((n + 1, p));
        }
        let first = lines.first().map(|(_, p)| p.seq).ok_or_else(|| {
            format!("{}: holds no record (a rotated or sealed file always does)", f.display())
        })?;
        parsed.push((first, f, lines));
    }
    parsed.sort_by_key(|(first, _, _)| *first);
    let (mut expected_seq, mut expected_prev) = match after {
        Some((seq, mac)) => (seq + 1, mac.to_string()),
        None => (1, GENESIS.to_string()),
    };
    let first_seq = expected_seq;
    let mut last: Option<(String, u64, &str, Option<&str>)> = None;
    let mut records = 0u64;
    for (_, f, lines) in &parsed {
        for (n, p) in lines {
            let at = format!("{}:{n}: record seq {}", f.display(), p.seq);
            if !chain.check(&p.canonical, p.mac) {
                return Err(format!(
                    "{at}: MAC does not match: the record was edited or inserted (or the key \
                     is not the one it was written with)"
                ));
            }
            if p.seq != expected_seq || p.prev != expected_prev {
                let after = match (&last, after) {
                    (Some((_, seq, _, _)), _) => format!("seq {seq}"),
                    (None, Some((seq, _))) => format!("the anchor (--after {seq}:…)"),
                    (None, None) => "the start of the chain".into(),
                };
                return Err(format!(
                    "{at}: does not follow {after} (expected seq {expected_seq}): a record was \
                     removed, inserted or reordered before it"
                ));
            }
            expected_seq = p.seq + 1;
            expected_prev = p.mac.to_string();
            records += 1;
            last = Some((format!("{}:{n}", f.display()), p.seq, p.event, p.reason));
        }
    }
    let Some((at, seq, event, reason)) = last else {
        return Err("no record to verify".into());
    };
    if !open {
        if event != Event::Seal.as_str() {
            return Err(format!(
                "{at}: the chain ends at seq {seq} without a seal: its tail was truncated, or \
                 the proxy crashed or is still running (--open accepts a log still written)"
            ));
        }
        if reason != Some("shutdown") {
            return Err(format!(
                "{at}: the chain ends at seq {seq} with a rotation seal: the files after it are \
                 missing"
            ));
        }
    }
    Ok(Verified { records, first_seq, last_seq: expected_seq - 1, last_mac: expected_prev })
}
