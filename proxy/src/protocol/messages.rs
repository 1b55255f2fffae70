//! The messages the encryption pipeline reads and rewrites: Parse, Bind,
//! ParameterDescription, RowDescription and DataRow. Every count and length is
//! checked against what is left of the message before it is used, so a
//! malformed body gives `None`, never a panic or an oversized allocation.

use bytes::{BufMut, Bytes, BytesMut};

/// A cursor over a message body.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self(body)
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    pub fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.i32().map(|v| v as u32)
    }

    /// A count that cannot be negative.
    pub fn count(&mut self) -> Option<usize> {
        usize::try_from(self.i16()?).ok()
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let nul = self.0.iter().position(|&b| b == 0)?;
        let s = self.take(nul)?;
        self.take(1)?;
        Some(s)
    }

    /// A length-prefixed value: `None` inside for SQL NULL (length -1).
    pub fn value(&mut self) -> Option<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Some(None),
            n => self.take(usize::try_from(n).ok()?).map(Some),
        }
    }

    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parse (F).
#[derive(Debug)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// Parameter type OIDs the client declared (0: unspecified).
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let query = r.cstr()?;
        let n = r.count()?;
        if r.rest().len() != 4 * n {
            return None;
        }
        let param_types = (0..n).map(|_| r.u32()).collect::<Option<_>>()?;
        Some(Self { name, query, param_types })
    }

    pub fn encode(&self, query: &[u8], out: &mut BytesMut) {
        let at = begin(out, b'P');
        put_cstr(out, self.name);
        put_cstr(out, query);
        out.put_i16(self.param_types.len() as i16);
        for &oid in &self.param_types {
            out.put_u32(oid);
        }
        end(out, at);
    }
}

/// Bind values to replace: (index, new binary value or NULL).
pub type Replaced = Vec<(usize, Option<Vec<u8>>)>;

/// Bind (F).
#[derive(Debug)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Format codes as sent: none (all text), one (for all) or one per value.
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    /// The result-column format codes, raw (count included).
    pub result_formats: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let nf = r.count()?;
        if r.rest().len() < 2 * nf {
            return None;
        }
        let param_formats = (0..nf).map(|_| r.i16()).collect::<Option<_>>()?;
        let np = r.count()?;
        // Each value takes at least its 4-byte length.
        if r.rest().len() < 4 * np {
            return None;
        }
        let params = (0..np).map(|_| r.value()).collect::<Option<_>>()?;
        let result_formats = r.rest();
        ResultFormats::decode(result_formats)?;
        Some(Self { portal, statement, param_formats, params, result_formats })
    }

    /// The format code of parameter `i`.
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }

    /// Writes this Bind with `replaced` values (index, new binary value)
    /// substituted; their format codes become binary.
    pub fn encode_with(&self, replaced: &[(usize, Option<Vec<u8>>)], out: &mut BytesMut) {
        // Which replacement each parameter has, if any: one pass over the
        // parameters, however many are replaced (a 100-row INSERT has
        // hundreds of both).
        let mut by_param = vec![None; self.params.len()];
        for (n, (i, _)) in replaced.iter().enumerate() {
            if let Some(slot) = by_param.get_mut(*i) {
                *slot = Some(n);
            }
        }
        let at = begin(out, b'B');
        put_cstr(out, self.portal);
        put_cstr(out, self.statement);
        out.put_i16(self.params.len() as i16);
        for (i, slot) in by_param.iter().enumerate() {
            out.put_i16(if slot.is_some() { 1 } else { self.param_format(i) });
        }
        out.put_i16(self.params.len() as i16);
        for (value, slot) in self.params.iter().zip(&by_param) {
            let value = match slot {
                Some(n) => replaced[*n].1.as_deref(),
                None => *value,
            };
            match value {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
        out.put_slice(self.result_formats);
        end(out, at);
    }
}

/// The result format codes of a Bind, as sent.
#[derive(Debug, Clone, Default)]
pub struct ResultFormats(Bytes);

impl ResultFormats {
    /// Checks `raw` (count, then codes) and returns it unchanged.
    pub fn decode(raw: &[u8]) -> Option<()> {
        let mut r = Reader::new(raw);
        let n = r.count()?;
        (r.rest().len() == 2 * n).then_some(())
    }

    /// From a checked raw slice.
    pub fn new(raw: Bytes) -> Self {
        Self(raw)
    }

    /// The format code of result column `i`.
    pub fn get(&self, i: usize) -> i16 {
        let mut r = Reader::new(&self.0);
        let n = r.count().unwrap_or(0);
        let at = match n {
            0 => return 0,
            1 => 0,
            _ => i,
        };
        let mut codes = Reader::new(r.rest());
        codes.take(2 * at);
        codes.i16().unwrap_or(0)
    }
}

/// One field of a RowDescription.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

/// The fields of a RowDescription (B).
pub fn row_description(body: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut r = Reader::new(body);
    let n = r.count()?;
    // Each field takes at least 19 bytes.
    if r.rest().len() < 19 * n {
        return None;
    }
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(Field {
            name: r.cstr()?,
            table_oid: r.u32()?,
            attnum: r.i16()?,
            type_oid: r.u32()?,
            type_len: r.i16()?,
            type_mod: r.i32()?,
            format: r.i16()?,
        });
    }
    r.is_empty().then_some(fields)
}

pub fn encode_row_description(fields: &[Field<'_>], out: &mut BytesMut) {
    let at = begin(out, b'T');
    out.put_i16(fields.len() as i16);
    for f in fields {
        put_cstr(out, f.name);
        out.put_u32(f.table_oid);
        out.put_i16(f.attnum);
        out.put_u32(f.type_oid);
        out.put_i16(f.type_len);
        out.put_i32(f.type_mod);
        out.put_i16(f.format);
    }
    end(out, at);
}

/// The type OIDs of a ParameterDescription (B).
pub fn parameter_description(body: &[u8]) -> Option<Vec<u32>> {
    let mut r = Reader::new(body);
    let n = r.count()?;
    if r.rest().len() != 4 * n {
        return None;
    }
    (0..n).map(|_| r.u32()).collect()
}

pub fn encode_parameter_description(oids: &[u32], out: &mut BytesMut) {
    let at = begin(out, b't');
    out.put_i16(oids.len() as i16);
    for &oid in oids {
        out.put_u32(oid);
    }
    end(out, at);
}

/// Starts a message: its type and a length to fill in by [`end`].
pub fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let at = out.len();
    out.put_u8(tag);
    out.put_u32(0);
    at
}

/// Fills in the length of the message begun at `at`.
pub fn end(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 1) as u32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Query (F).
pub fn query(sql: &str, out: &mut BytesMut) {
    let at = begin(out, b'Q');
    put_cstr(out, sql.as_bytes());
    end(out, at);
}

/// Describe (F) of a prepared statement.
pub fn describe_statement(name: &[u8], out: &mut BytesMut) {
    let at = begin(out, b'D');
    out.put_u8(b'S');
    put_cstr(out, name);
    end(out, at);
}

/// Parse and Describe of the unnamed statement `sql`, then Sync: how the
/// result columns of a query are learnt without running it.
pub fn describe_unnamed(sql: &str, out: &mut BytesMut) {
    let at = begin(out, b'P');
    put_cstr(out, b"");
    put_cstr(out, sql.as_bytes());
    out.put_i16(0);
    end(out, at);
    describe_statement(b"", out);
    out.put_slice(&[b'S', 0, 0, 0, 4]);
}

/// The name of the statement [`describe_and_close`] prepares: the client's own
/// statements (unnamed included) are left alone.
pub const PROBE_STATEMENT: &[u8] = b"pgwarden_copy_source";

/// Parse of `sql` as [`PROBE_STATEMENT`], its Describe and its Close, with no
/// Sync: how the result columns of a query are learnt in the middle of a
/// client's extended-protocol messages without ending its implicit
/// transaction or touching its statements.
pub fn describe_and_close(sql: &str, out: &mut BytesMut) {
    let at = begin(out, b'P');
    put_cstr(out, PROBE_STATEMENT);
    put_cstr(out, sql.as_bytes());
    out.put_i16(0);
    end(out, at);
    describe_statement(PROBE_STATEMENT, out);
    let at = begin(out, b'C');
    out.put_u8(b'S');
    put_cstr(out, PROBE_STATEMENT);
    end(out, at);
}

/// Parse, Bind and Execute of the unnamed statement `sql` with no parameters,
/// then Flush, so that its result (an error) is sent at once.
pub fn run_unnamed(sql: &str, out: &mut BytesMut) {
    let at = begin(out, b'P');
    put_cstr(out, b"");
    put_cstr(out, sql.as_bytes());
    out.put_i16(0);
    end(out, at);
    let at = begin(out, b'B');
    out.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    end(out, at);
    let at = begin(out, b'E');
    out.put_u8(0);
    out.put_i32(0);
    end(out, at);
    out.put_slice(&[b'H', 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_round_trips_with_a_replaced_value() {
        let mut body = BytesMut::new();
        put_cstr(&mut body, b"p");
        put_cstr(&mut body, b"s");
        body.put_i16(1);
        body.put_i16(0);
        body.put_i16(2);
        body.put_i32(3);
        body.put_slice(b"abc");
        body.put_i32(-1);
        body.put_i16(1);
        body.put_i16(1);
        let bind = Bind::decode(&body).unwrap();
        assert_eq!(bind.params, vec![Some(&b"abc"[..]), None]);
        assert_eq!(bind.param_format(1), 0);
        let mut out = BytesMut::new();
        bind.encode_with(&[(0, Some(vec![1, 2]))], &mut out);
        let again = Bind::decode(&out[5..]).unwrap();
        assert_eq!(again.params, vec![Some(&[1u8, 2][..]), None]);
        assert_eq!(again.param_formats, vec![1, 0]);
        assert_eq!(ResultFormats::new(Bytes::copy_from_slice(again.result_formats)).get(7), 1);
    }

    #[test]
    fn malformed_bodies_are_refused_without_panicking() {
        for body in [
            &[][..],
            &[0][..],
            b"p\0s\0\xff\xff",
            b"p\0s\0\0\x01",
            b"p\0s\0\0\0\0\x01\x7f\xff\xff\xff",
            b"p\0s\0\0\0\0\x01\xff\xff\xff\xfe",
            b"p\0s\0\0\0\0\0\0\x05\0\0",
        ] {
            assert!(Bind::decode(body).is_none(), "{body:?}");
            let _ = Parse::decode(body);
            let _ = row_description(body);
            let _ = parameter_description(body);
        }
        assert!(row_description(b"\x7f\xff").is_none());
        assert!(parameter_description(b"\0\x02\0\0\0\x17").is_none());
    }
}
