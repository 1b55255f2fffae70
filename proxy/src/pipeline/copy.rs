//! COPY rows in text and csv format: fields are found, encrypted on the way
//! in (FROM STDIN) and decrypted on the way out (TO STDOUT); every other byte
//! of a row is passed on as it came.
//!
//! On the way in, CopyData messages split the stream anywhere, so the bytes
//! of an unfinished row wait for the next message (within the message size
//! limit). On the way out, Postgres sends one row per CopyData.

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::backend::Action;
use super::frontend::{encrypt, invalid_value, stored_envelope, Refused};
use crate::access::mask;
use crate::crypto::{codec, Format, Keyring};
use crate::metrics::{ColumnMetrics, ColumnTally};
use crate::protocol::messages;
use crate::sql::{CopyFormat, CopySpec, EncryptedColumn};

/// Calls `on` with the index and byte of each delimiter and newline of
/// `buf` that is outside quotes and escapes, until it answers false.
fn separators(spec: &CopySpec, buf: &[u8], mut on: impl FnMut(usize, u8) -> bool) {
    let mut i = 0;
    let mut quoted = false;
    while i < buf.len() {
        let b = buf[i];
        match spec.format {
            CopyFormat::Text if b == b'\\' => i += 1,
            CopyFormat::Csv
                if quoted
                    && b == spec.escape
                    && spec.escape != spec.quote
                    && buf.get(i + 1).is_some_and(|&n| n == spec.quote || n == spec.escape) =>
            {
                i += 1
            }
            CopyFormat::Csv if b == spec.quote => quoted = !quoted,
            _ if !quoted && (b == spec.delimiter || b == b'\n') && !on(i, b) => return,
            _ => {}
        }
        i += 1;
    }
}

/// The fields of one row (line terminator excluded), as byte ranges.
fn fields(spec: &CopySpec, row: &[u8], out: &mut Vec<Range<usize>>) {
    out.clear();
    let mut start = 0;
    separators(spec, row, |i, b| {
        if b == spec.delimiter {
            out.push(start..i);
            start = i + 1;
        }
        true
    });
    out.push(start..row.len().max(start));
}

/// Where the row starting at `buf[0]` ends: the index just past its `\n`.
fn row_end(spec: &CopySpec, buf: &[u8]) -> Option<usize> {
    let mut end = None;
    separators(spec, buf, |i, b| {
        if b == b'\n' {
            end = Some(i + 1);
        }
        end.is_none()
    });
    end
}

/// A row without its line terminator (`\n` or `\r\n`).
fn strip_eol(row: &[u8]) -> (&[u8], &[u8]) {
    let body = row.strip_suffix(b"\n").unwrap_or(row);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    row.split_at(body.len())
}

/// The value of a field, unescaped, or `None` for NULL.
fn value(spec: &CopySpec, raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    match spec.format {
        CopyFormat::Text => {
            if raw == spec.null.as_slice() {
                return None;
            }
            // Most fields (numbers, words, bytea's hex once its leading `\\`
            // is read) hold no escape at all: copied whole.
            let (head, rest) = match raw {
                [b'\\', b'\\', rest @ ..] => (&b"\\"[..], rest),
                _ => (&b""[..], raw),
            };
            if !rest.contains(&b'\\') {
                out.extend_from_slice(head);
                out.extend_from_slice(rest);
                return Some(());
            }
            let mut i = 0;
            while i < raw.len() {
                if raw[i] != b'\\' {
                    out.push(raw[i]);
                    i += 1;
                    continue;
                }
                let Some(&c) = raw.get(i + 1) else {
                    i += 1;
                    continue;
                };
                i += 2;
                match c {
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(11),
                    b'0'..=b'7' => {
                        let mut v = u32::from(c - b'0');
                        for _ in 0..2 {
                            match raw.get(i) {
                                Some(&d @ b'0'..=b'7') => {
                                    v = v * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    b'x' => {
                        let hex = |b: u8| (b as char).to_digit(16);
                        let mut v = 0;
                        let mut n = 0;
                        while n < 2 {
                            match raw.get(i).and_then(|&d| hex(d)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    i += 1;
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 {
                            out.push(b'x');
                        } else {
                            out.push(v as u8);
                        }
                    }
                    other => out.push(other),
                }
            }
        }
        CopyFormat::Csv => {
            if raw == spec.null.as_slice() {
                return None;
            }
            let mut quoted = false;
            let mut i = 0;
            while i < raw.len() {
                let b = raw[i];
                if quoted && b == spec.escape {
                    if let Some(&n) =
                        raw.get(i + 1).filter(|&&n| n == spec.quote || n == spec.escape)
                    {
                        out.push(n);
                        i += 2;
                        continue;
                    }
                }
                if b == spec.quote {
                    quoted = !quoted;
                } else {
                    out.push(b);
                }
                i += 1;
            }
        }
    }
    Some(())
}

/// Appends `value` as a field of `spec`'s format.
fn put_field(spec: &CopySpec, value: &[u8], out: &mut Vec<u8>) {
    match spec.format {
        CopyFormat::Text => {
            let special =
                |b: &u8| matches!(b, b'\\' | b'\n' | b'\r' | b'\t') || *b == spec.delimiter;
            if !value.iter().any(special) {
                out.extend_from_slice(value);
                return;
            }
            for &b in value {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' if spec.delimiter == b'\t' => out.extend_from_slice(b"\\t"),
                    b if b == spec.delimiter => {
                        out.push(b'\\');
                        out.push(b);
                    }
                    b => out.push(b),
                }
            }
        }
        CopyFormat::Csv => {
            let special =
                |b: &u8| *b == spec.delimiter || *b == spec.quote || *b == b'\n' || *b == b'\r';
            if !value.iter().any(special) && value != spec.null.as_slice() {
                out.extend_from_slice(value);
                return;
            }
            out.push(spec.quote);
            for &b in value {
                if b == spec.quote || b == spec.escape {
                    out.push(spec.escape);
                }
                out.push(b);
            }
            out.push(spec.quote);
        }
    }
}

/// COPY FROM STDIN into encrypted columns: the client's rows, re-emitted with
/// the values of encrypted columns encrypted.
pub struct CopyIn {
    spec: Arc<CopySpec>,
    columns: Vec<Option<Arc<EncryptedColumn>>>,
    /// Per field: the role writes the column's envelopes as they are stored
    /// (`ciphertext` access), not values to encrypt.
    as_stored: Vec<bool>,
    /// Bytes of a row not yet complete.
    partial: Vec<u8>,
    /// Most bytes `partial` may hold.
    max_row: usize,
    header: bool,
    ended: bool,
    ranges: Vec<Range<usize>>,
    scratch: Vec<u8>,
    /// The envelope of the field being written.
    envelope: Vec<u8>,
    row: Vec<u8>,
    /// Values encrypted, reported when the COPY ends.
    tally: ColumnTally,
    metrics: ColumnMetrics,
}

impl Drop for CopyIn {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.tally.flush(&self.metrics);
        // The client's plaintext rows and values.
        self.partial.zeroize();
        self.scratch.zeroize();
        self.row.zeroize();
    }
}

impl CopyIn {
    /// `as_stored`: whether the role writes a column's envelopes as stored.
    pub fn new(
        spec: Arc<CopySpec>,
        max_row: usize,
        metrics: ColumnMetrics,
        as_stored: impl Fn(&EncryptedColumn) -> bool,
    ) -> Option<Self> {
        let crate::sql::CopyDirection::In(columns) = &spec.direction else { return None };
        let columns = columns.clone();
        let as_stored = columns.iter().map(|c| c.as_deref().is_some_and(&as_stored)).collect();
        Some(Self {
            header: spec.header,
            spec,
            columns,
            as_stored,
            partial: Vec::new(),
            max_row,
            ended: false,
            ranges: Vec::new(),
            scratch: Vec::new(),
            envelope: Vec::new(),
            row: Vec::new(),
            tally: ColumnTally::default(),
            metrics,
        })
    }

    /// Takes one CopyData payload; appends a CopyData of the complete rows it
    /// finishes, encrypted, to `out`.
    pub fn data(
        &mut self,
        data: &[u8],
        keyring: &Keyring,
        out: &mut BytesMut,
    ) -> Result<(), Refused> {
        self.partial.extend_from_slice(data);
        let mut rows = std::mem::take(&mut self.row);
        rows.clear();
        let mut at = 0;
        while let Some(n) = row_end(&self.spec, &self.partial[at..]) {
            self.row_into(at..at + n, keyring, &mut rows)?;
            at += n;
        }
        self.partial.drain(..at);
        if self.partial.len() > self.max_row {
            return Err(Refused(
                "54000",
                format!(
                    "a COPY row is longer than {} bytes (listen.max_message_bytes)",
                    self.max_row
                ),
            ));
        }
        if !rows.is_empty() {
            copy_data(&rows, out);
        }
        self.row = rows;
        Ok(())
    }

    /// At CopyDone: the last row, if it has no line terminator.
    pub fn done(&mut self, keyring: &Keyring, out: &mut BytesMut) -> Result<(), Refused> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        let n = self.partial.len();
        self.row_into(0..n, keyring, &mut rows)?;
        self.partial.clear();
        copy_data(&rows, out);
        Ok(())
    }

    fn row_into(
        &mut self,
        range: Range<usize>,
        keyring: &Keyring,
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        let row = &self.partial[range];
        let (body, eol) = strip_eol(row);
        if self.ended || std::mem::take(&mut self.header) || body == b"\\." {
            self.ended |= body == b"\\.";
            out.extend_from_slice(row);
            return Ok(());
        }
        fields(&self.spec, body, &mut self.ranges);
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                out.push(self.spec.delimiter);
            }
            let raw = &body[r.clone()];
            let column = self.columns.get(i).and_then(Option::as_ref);
            let Some(column) = column else {
                out.extend_from_slice(raw);
                continue;
            };
            if value(&self.spec, raw, &mut self.scratch).is_none() {
                out.extend_from_slice(raw);
                continue;
            }
            if self.as_stored.get(i).copied().unwrap_or(false) {
                self.envelope = stored_envelope(keyring, column, Format::Text, &self.scratch)?;
            } else {
                let canonical = codec::canonicalize_text(column.logical_type, &self.scratch)
                    .map_err(|e| invalid_value(&column.name, e))?;
                self.envelope.clear();
                encrypt(keyring, column, &canonical, &mut self.envelope)?;
                self.tally.encrypted(column.id);
            }
            // bytea's `\x` hex, straight into the row: hex digits need no
            // escaping or quoting, only the backslash does in text format.
            if self.spec.format == CopyFormat::Text {
                out.push(b'\\');
            }
            codec::to_text(crate::crypto::LogicalType::Bytea, &self.envelope, out)
                .map_err(|e| invalid_value(&column.name, e))?;
        }
        out.extend_from_slice(eol);
        Ok(())
    }
}

/// COPY TO STDOUT of encrypted columns: Postgres' rows, with the values of
/// encrypted columns decrypted.
pub struct CopyOut {
    spec: Arc<CopySpec>,
    /// The encrypted columns among the fields, by position, with what the
    /// role gets of each (ciphertext fields are not among them).
    sources: Arc<[(usize, Arc<EncryptedColumn>, Action)]>,
    header: bool,
    ranges: Vec<Range<usize>>,
    scratch: Vec<u8>,
    envelope: Vec<u8>,
    plain: Vec<u8>,
    text: Vec<u8>,
    row: Vec<u8>,
    /// Values decrypted and masked, reported when the COPY ends.
    tally: ColumnTally,
    metrics: ColumnMetrics,
}

impl Drop for CopyOut {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.tally.flush(&self.metrics);
        self.plain.zeroize();
        self.text.zeroize();
        self.row.zeroize();
    }
}

impl CopyOut {
    pub fn new(
        spec: Arc<CopySpec>,
        sources: Arc<[(usize, Arc<EncryptedColumn>, Action)]>,
        metrics: ColumnMetrics,
    ) -> Self {
        Self {
            header: spec.header,
            spec,
            sources,
            ranges: Vec::new(),
            scratch: Vec::new(),
            envelope: Vec::new(),
            plain: Vec::new(),
            text: Vec::new(),
            row: Vec::new(),
            tally: ColumnTally::default(),
            metrics,
        }
    }

    /// Appends the CopyData of one row, decrypted, to `out`; the message
    /// (naming the column, never a value) when a value does not decrypt.
    pub fn row(
        &mut self,
        data: &[u8],
        keyring: &Keyring,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if self.sources.is_empty() || std::mem::take(&mut self.header) {
            copy_data(data, out);
            return Ok(());
        }
        let (body, eol) = strip_eol(data);
        fields(&self.spec, body, &mut self.ranges);
        self.row.clear();
        let mut next = self.sources.iter().peekable();
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                self.row.push(self.spec.delimiter);
            }
            let raw = &body[r.clone()];
            let Some((_, column, action)) = next.next_if(|(index, _, _)| *index == i) else {
                self.row.extend_from_slice(raw);
                continue;
            };
            if value(&self.spec, raw, &mut self.scratch).is_none() {
                self.row.extend_from_slice(raw);
                continue;
            }
            let fail = |what: &dyn std::fmt::Display| format!("column {}: {what}", column.name);
            super::backend::decode_bytea_text(&self.scratch, &mut self.envelope)
                .ok_or_else(|| fail(&"the stored value is not bytea text"))?;
            keyring.decrypt(&column.aad, &self.envelope, &mut self.plain).map_err(|e| fail(&e))?;
            self.tally.decrypted(column.id);
            self.text.clear();
            codec::encode(column.logical_type, Format::Text, &self.plain, &mut self.text)
                .map_err(|e| fail(&e))?;
            match action {
                Action::Decrypt => put_field(&self.spec, &self.text, &mut self.row),
                Action::Mask(m) => {
                    let hash =
                        |t: &[u8]| keyring.readable(&column.key).first().map(|c| c.mask_hash(t));
                    self.tally.masked(column.id);
                    if mask::apply(m, &self.text, hash, &mut self.plain) {
                        put_field(&self.spec, &self.plain, &mut self.row);
                    } else {
                        self.row.extend_from_slice(&self.spec.null);
                    }
                }
                // Refused before the first row; never shown.
                Action::Deny => self.row.extend_from_slice(&self.spec.null),
            }
        }
        self.row.extend_from_slice(eol);
        copy_data(&self.row, out);
        Ok(())
    }
}

fn copy_data(payload: &[u8], out: &mut BytesMut) {
    let at = messages::begin(out, b'd');
    out.put_slice(payload);
    messages::end(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, KeyRow, KeyStatus, LogicalType, MasterKey};
    use crate::sql::CopyDirection;
    use pgwarden_config::ColumnMode;

    fn spec(format: CopyFormat) -> CopySpec {
        let csv = format == CopyFormat::Csv;
        CopySpec {
            format,
            delimiter: if csv { b',' } else { b'\t' },
            null: if csv { Vec::new() } else { b"\\N".to_vec() },
            quote: b'"',
            escape: b'"',
            header: false,
            direction: CopyDirection::Out(String::new()),
        }
    }

    fn split(spec: &CopySpec, row: &[u8]) -> Vec<Option<String>> {
        let mut ranges = Vec::new();
        fields(spec, row, &mut ranges);
        let mut v = Vec::new();
        ranges
            .iter()
            .map(|r| {
                value(spec, &row[r.clone()], &mut v)
                    .map(|()| String::from_utf8_lossy(&v).into_owned())
            })
            .collect()
    }

    #[test]
    fn text_rows_split_on_unescaped_delimiters_and_unescape() {
        let s = spec(CopyFormat::Text);
        assert_eq!(
            split(&s, b"a\\tb\t\\N\tx\\\\y\\n\t\\101\\x41"),
            [Some("a\tb".into()), None, Some("x\\y\n".into()), Some("AA".into())]
        );
        assert_eq!(row_end(&s, b"a\\\nb\nc"), Some(5));
        let mut out = Vec::new();
        put_field(&s, b"a\tb\\c\nd", &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\nd");
    }

    #[test]
    fn csv_rows_respect_quotes() {
        let s = spec(CopyFormat::Csv);
        assert_eq!(
            split(&s, b"\"a,b\",,\"\",\"say \"\"hi\"\"\""),
            [Some("a,b".into()), None, Some(String::new()), Some("say \"hi\"".into())]
        );
        assert_eq!(row_end(&s, b"\"a\nb\",c\nnext"), Some(8));
        let mut out = Vec::new();
        put_field(&s, b"x,\"y\"", &mut out);
        assert_eq!(out, b"\"x,\"\"y\"\"\"");
        out.clear();
        put_field(&s, b"", &mut out);
        assert_eq!(out, b"\"\"", "an empty string must not read as NULL");
    }

    fn column(name: &str, mode: ColumnMode, ty: LogicalType, id: usize) -> Arc<EncryptedColumn> {
        Arc::new(EncryptedColumn {
            name: format!("public.t.{name}"),
            schema: "public".into(),
            table: "t".into(),
            column: name.into(),
            mode,
            key: "k".into(),
            logical_type: ty,
            aad: crate::crypto::envelope::column_aad("public", "t", name),
            id,
        })
    }

    /// Client rows (COPY FROM) and server rows (COPY TO) are untrusted
    /// bytes: random ones, cut anywhere and in both formats, give rows or a
    /// refusal with its SQLSTATE, never a panic; a refusal names the column,
    /// never a value; damaged envelopes do not decrypt.
    #[test]
    fn random_and_damaged_rows_are_refused_never_panicked_on() {
        use rand::{Rng, SeedableRng};

        let master = MasterKey::generate();
        let key = DataKey::generate();
        let row = KeyRow {
            id: 1,
            name: "k".into(),
            version: 1,
            status: KeyStatus::Active,
            wrapped: key.wrap(&master, "k", 1).unwrap(),
            fingerprint: Some(key.fingerprint()),
        };
        let ring = Keyring::load(&master, [row]).unwrap();
        let det = column("ssn", ColumnMode::Deterministic, LogicalType::Text, 0);
        let num = column("n", ColumnMode::Randomized, LogicalType::Int4, 1);
        let fields = vec![None, Some(det.clone()), Some(num.clone())];
        let sources: Arc<[(usize, Arc<EncryptedColumn>, Action)]> =
            Arc::new([(1, det, Action::Decrypt), (2, num, Action::Decrypt)]);
        // Bytes that mean something to the parsers, and any other byte.
        const MEANINGFUL: &[u8] = b"\\\t\n\r,\"xN0123456789-.ab";
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5057);
        for format in [CopyFormat::Text, CopyFormat::Csv] {
            let mut spec_in = spec(format);
            spec_in.direction = CopyDirection::In(fields.clone());
            let spec_in = Arc::new(spec_in);
            let spec_out = Arc::new(spec(format));
            // One valid row each way, to damage below.
            let mut good = BytesMut::new();
            let mut copy =
                CopyIn::new(spec_in.clone(), 1024, ColumnMetrics::default(), |_| false).unwrap();
            let plain = if format == CopyFormat::Text {
                "1\t123-45-6789\t42\n"
            } else {
                "1,123-45-6789,42\n"
            };
            assert!(copy.data(plain.as_bytes(), &ring, &mut good).is_ok());
            let stored = good[5..].to_vec();
            let mut back = BytesMut::new();
            let mut out = CopyOut::new(spec_out.clone(), sources.clone(), ColumnMetrics::default());
            out.row(&stored, &ring, &mut back).unwrap();
            assert_eq!(&back[5..], plain.as_bytes());

            // (COPY FROM rows taken, refused; COPY TO rows refused)
            let mut seen = [0u32; 3];
            for round in 0..3000 {
                let bytes: Vec<u8> = if round % 3 == 0 {
                    // A stored row with a few bytes changed.
                    let mut b = stored.clone();
                    for _ in 0..rng.gen_range(1..4) {
                        let i = rng.gen_range(0..b.len());
                        b[i] = MEANINGFUL[rng.gen_range(0..MEANINGFUL.len())];
                    }
                    b
                } else {
                    let len = rng.gen_range(0..120);
                    (0..len)
                        .map(|_| {
                            if rng.gen_bool(0.8) {
                                MEANINGFUL[rng.gen_range(0..MEANINGFUL.len())]
                            } else {
                                rng.gen()
                            }
                        })
                        .collect()
                };
                let mut sink = BytesMut::new();
                let mut copy =
                    CopyIn::new(spec_in.clone(), 64, ColumnMetrics::default(), |_| round % 2 == 0)
                        .unwrap();
                let step = rng.gen_range(1..40);
                let fed = bytes
                    .chunks(step)
                    .try_for_each(|chunk| copy.data(chunk, &ring, &mut sink))
                    .and_then(|()| copy.done(&ring, &mut sink));
                seen[usize::from(fed.is_err())] += 1;
                if let Err(Refused(code, message)) = fed {
                    assert!(["22P02", "54000"].contains(&code), "{code}: {message}");
                    assert!(
                        message.contains("public.t.") || code == "54000",
                        "a refusal names its column: {message}"
                    );
                }
                let mut out =
                    CopyOut::new(spec_out.clone(), sources.clone(), ColumnMetrics::default());
                if let Err(message) = out.row(&bytes, &ring, &mut sink) {
                    seen[2] += 1;
                    assert!(message.starts_with("column public.t."), "{message}");
                }
            }
            assert!(seen.iter().all(|&n| n > 100), "both outcomes, both ways: {seen:?}");
        }
    }
}
