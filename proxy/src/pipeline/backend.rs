//! Postgres → client: RowDescription and ParameterDescription report the
//! logical types of encrypted columns, and the values of encrypted columns in
//! DataRows are decrypted into the format the client asked for. Rows of
//! results without an encrypted column are forwarded as they came.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use zeroize::Zeroize;

use pgwarden_config::{AccessLevel, Mask};

use super::copy::CopyOut;
use super::{Encryption, Pending, Queue};
use crate::access::mask;
use crate::crypto::{codec, Format};
use crate::metrics::ColumnTally;
use crate::protocol::messages::{self, ResultFormats};
use crate::protocol::{self, Message};
use crate::sql::{CopySpec, EncryptedColumn};

/// SQLSTATE of a stored value that does not decrypt.
const DATA_CORRUPTED: &str = "XX001";
/// SQLSTATE of a column the role's policy denies.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// Type OID of text, which masked columns are reported as.
const TEXT_OID: u32 = 25;
const BYTEA_OID: u32 = 17;

/// Command tags after which the catalog is read again.
const DDL_TAGS: &[&[u8]] = &[
    b"CREATE TABLE",
    b"DROP TABLE",
    b"ALTER TABLE",
    b"CREATE VIEW",
    b"DROP VIEW",
    b"ALTER VIEW",
    b"CREATE MATERIALIZED VIEW",
    b"DROP MATERIALIZED VIEW",
];

/// What became of a message from Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Relayed, rewritten or dropped as the pipeline wants.
    Relayed,
    /// Relayed, and DDL was committed: refresh the catalog before the client
    /// gets it.
    RefreshCatalog,
    /// The ReadyForQuery answering the proxy's own Sync, swallowed.
    OwnReady,
}

/// Postgres sent a message that does not decode.
#[derive(Debug, Clone, Copy)]
pub struct Malformed;

/// An encrypted column in a result: its position and format, and what the
/// role gets of it.
#[derive(Debug, Clone)]
struct PlanField {
    index: usize,
    column: Arc<EncryptedColumn>,
    format: Format,
    action: Action,
}

/// What becomes of an encrypted column's values in a result. Ciphertext
/// access needs nothing: the envelope goes out as the bytea it is.
#[derive(Debug, Clone)]
pub enum Action {
    Decrypt,
    Mask(Arc<Mask>),
    /// Analysis refuses statements that read a denied column; this is the
    /// backstop for what it could not see.
    Deny,
}

/// The encrypted columns of a result, by position; empty for most results.
type Plan = Arc<[PlanField]>;

/// The encrypted columns among a statement's result columns.
type Sources = Arc<[(usize, Arc<EncryptedColumn>)]>;

/// One session's backend side.
pub struct Backend {
    enc: Arc<Encryption>,
    /// The login role: whose policy applies.
    role: Arc<str>,
    /// Values decrypted and masked, reported at each ReadyForQuery.
    tally: ColumnTally,
    /// Result columns of prepared statements, learned from their Describe.
    statements: HashMap<Bytes, Sources>,
    /// The plan of each bound portal.
    portals: HashMap<Bytes, Plan>,
    /// The plan of the simple-query result being read.
    current: Plan,
    /// A value failed to decrypt and the client got an error: drop the rest
    /// of the answer up to ReadyForQuery.
    poisoned: bool,
    /// DDL completed: find the registered columns again at the next
    /// ReadyForQuery outside a transaction (before, it is not visible to the
    /// proxy's own connection).
    ddl: bool,
    /// The encrypted fields of the next COPY TO STDOUT, from its source's
    /// Describe.
    copy_source: Option<(Arc<CopySpec>, Sources)>,
    /// The same for prepared COPY TO STDOUT statements, by statement name,
    /// and for the portals bound from them.
    copy_statements: HashMap<Bytes, (Arc<CopySpec>, Sources)>,
    copy_portals: HashMap<Bytes, (Arc<CopySpec>, Sources)>,
    /// The COPY TO STDOUT in progress, if its rows need decrypting.
    copy_out: Option<CopyOut>,
    empty: Plan,
    envelope: Vec<u8>,
    plain: Vec<u8>,
    encoded: Vec<u8>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.plain.zeroize();
        self.encoded.zeroize();
    }
}

impl Backend {
    pub fn new(enc: Arc<Encryption>, role: Arc<str>) -> Self {
        let empty: Plan = Arc::new([]);
        Self {
            enc,
            role,
            tally: ColumnTally::default(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            current: empty.clone(),
            poisoned: false,
            ddl: false,
            copy_source: None,
            copy_statements: HashMap::new(),
            copy_portals: HashMap::new(),
            copy_out: None,
            empty,
            envelope: Vec::new(),
            plain: Vec::new(),
            encoded: Vec::new(),
        }
    }

    pub async fn refresh_catalog(&self) {
        self.enc.refresh_catalog().await;
    }

    /// Appends what the client gets for `msg` to `out`. Returns true when the
    /// catalog must be refreshed before `out` is sent (DDL was committed).
    /// `Err` when Postgres sent a malformed message.
    pub fn handle(
        &mut self,
        msg: &Message,
        queue: &Queue,
        out: &mut BytesMut,
    ) -> Result<Answer, Malformed> {
        let mut q = queue.lock();
        let body = msg.body();
        let mut forward = !self.poisoned;
        match msg.tag {
            b'1' => {
                if let Some(Pending::Parse { injected: true } | Pending::CopyParse) = q.pop_front()
                {
                    forward = false;
                }
            }
            b'2' => {
                if let Some(Pending::Bind { portal, statement, formats, injected }) = q.pop_front()
                {
                    if injected {
                        forward = false;
                    } else {
                        match self.copy_statements.get(&statement) {
                            Some(copy) => self.copy_portals.insert(portal.clone(), copy.clone()),
                            None => self.copy_portals.remove(&portal),
                        };
                        let plan = self.plan(&statement, &formats);
                        self.portals.insert(portal, plan);
                    }
                }
            }
            b'3' => match q.pop_front() {
                Some(Pending::Close { statement: Some(name) }) => {
                    self.statements.remove(&name);
                    self.copy_statements.remove(&name);
                }
                Some(Pending::CopyClose) => forward = false,
                _ => {}
            },
            b't' if matches!(q.front(), Some(Pending::CopyDescribe { .. })) => forward = false,
            b't' => {
                if let Some(Pending::DescribeStatement { params, injected, .. }) = q.front() {
                    if *injected {
                        forward = false;
                    } else if !params.is_empty() && forward {
                        let mut oids = messages::parameter_description(body).ok_or(Malformed)?;
                        let access = self.enc.access.load();
                        for p in params.iter() {
                            if let Some(oid) = oids.get_mut(p.index) {
                                // A ciphertext role writes envelopes: bytea.
                                let stored = access.resolve(&self.role, &p.column).level
                                    == AccessLevel::Ciphertext;
                                *oid = if stored { BYTEA_OID } else { p.reported_oid() };
                            }
                        }
                        messages::encode_parameter_description(&oids, out);
                        return Ok(Answer::Relayed);
                    }
                }
            }
            b'T' => {
                let mut fields = messages::row_description(body).ok_or(Malformed)?;
                let catalog = self.enc.catalog.load();
                let access = self.enc.access.load();
                let mut sources = Vec::new();
                let mut denied = None;
                for (i, f) in fields.iter_mut().enumerate() {
                    if let Some(c) = catalog.column(f.table_oid, f.attnum) {
                        match access.resolve(&self.role, c).level {
                            AccessLevel::Full => {
                                f.type_oid = c.logical_type.oid();
                                f.type_len = c.logical_type.type_size();
                                f.type_mod = -1;
                            }
                            AccessLevel::Masked => {
                                f.type_oid = TEXT_OID;
                                f.type_len = -1;
                                f.type_mod = -1;
                            }
                            AccessLevel::Ciphertext => {}
                            AccessLevel::Deny => denied = denied.or(Some(c.clone())),
                        }
                        sources.push((i, c.clone()));
                    }
                }
                match q.front() {
                    Some(Pending::DescribeStatement { name, injected, copy_out, .. }) => {
                        forward &= !*injected;
                        if *injected && !*copy_out {
                            self.copy_statements.remove(name);
                        }
                        self.statements.insert(name.clone(), sources.into());
                        q.pop_front();
                    }
                    Some(Pending::CopyDescribe { spec, statement }) => {
                        let source = (spec.clone(), sources.into());
                        match statement {
                            Some(name) => {
                                self.copy_statements.insert(name.clone(), source);
                            }
                            None => self.copy_source = Some(source),
                        }
                        q.pop_front();
                        return Ok(Answer::Relayed);
                    }
                    Some(Pending::DescribePortal) => {
                        q.pop_front();
                    }
                    Some(Pending::Simple) => {
                        if let Some(c) = denied.filter(|_| forward) {
                            self.deny(&c, out);
                            return Ok(Answer::Relayed);
                        }
                        self.current = sources
                            .into_iter()
                            .filter_map(|(index, column)| {
                                self.field(index, column, format(fields[index].format))
                            })
                            .collect();
                    }
                    _ => {}
                }
                if forward {
                    messages::encode_row_description(&fields, out);
                }
                return Ok(Answer::Relayed);
            }
            b'n' => match q.front() {
                Some(Pending::CopyDescribe { statement, .. }) => {
                    match statement {
                        Some(name) => {
                            self.copy_statements.remove(name);
                        }
                        None => self.copy_source = None,
                    }
                    forward = false;
                    q.pop_front();
                }
                Some(Pending::DescribeStatement { name, injected, copy_out, .. }) => {
                    forward &= !*injected;
                    if *injected && !*copy_out {
                        self.copy_statements.remove(name);
                    }
                    self.statements.insert(name.clone(), Arc::new([]));
                    q.pop_front();
                }
                Some(Pending::DescribePortal) => {
                    q.pop_front();
                }
                _ => {}
            },
            b'D' => {
                let plan = match q.front() {
                    Some(Pending::Simple) => self.current.clone(),
                    Some(Pending::Execute { portal }) => {
                        self.portals.get(portal).cloned().unwrap_or_else(|| self.empty.clone())
                    }
                    _ => self.empty.clone(),
                };
                if forward && !plan.is_empty() {
                    drop(q);
                    self.row(body, &plan, out)?;
                    return Ok(Answer::Relayed);
                }
            }
            b'H' => {
                let prepared = match q.front() {
                    Some(Pending::Execute { portal }) => self.copy_portals.get(portal).cloned(),
                    _ => None,
                };
                if let Some((spec, sources)) = self.copy_source.take().or(prepared) {
                    let fields: Vec<(usize, Arc<EncryptedColumn>, Action)> = sources
                        .iter()
                        .filter_map(|(i, c)| {
                            let f = self.field(*i, c.clone(), Format::Text)?;
                            Some((f.index, f.column, f.action))
                        })
                        .collect();
                    if let Some((_, c, _)) = fields
                        .iter()
                        .find(|(_, _, a)| matches!(a, Action::Deny))
                        .filter(|_| forward)
                    {
                        let c = c.clone();
                        self.deny(&c, out);
                        return Ok(Answer::Relayed);
                    }
                    let metrics = self.enc.metrics.clone();
                    self.copy_out = Some(CopyOut::new(spec, fields.into(), metrics));
                }
            }
            b'd' if forward && self.copy_out.is_some() => {
                drop(q);
                let keyring = self.enc.keyring.load();
                let Some(copy) = self.copy_out.as_mut() else { return Ok(Answer::Relayed) };
                if let Err(message) = copy.row(body, &keyring, out) {
                    tracing::warn!(reason = %message, "stored value does not decrypt");
                    out.put_slice(&protocol::error_response("ERROR", DATA_CORRUPTED, &message));
                    self.poisoned = true;
                    self.copy_out = None;
                }
                return Ok(Answer::Relayed);
            }
            b'c' => self.copy_out = None,
            b'C' => {
                self.copy_out = None;
                let tag = messages::Reader::new(body).cstr().unwrap_or_default();
                self.ddl |= DDL_TAGS.iter().any(|t| tag.starts_with(t));
                self.end_of_result(&mut q);
            }
            b's' | b'I' => self.end_of_result(&mut q),
            b'E' if matches!(
                q.front(),
                Some(Pending::CopyParse | Pending::CopyDescribe { .. })
            ) =>
            {
                self.copy_source = None;
                let prepared = q
                    .iter()
                    .take(2)
                    .any(|p| matches!(p, Pending::CopyDescribe { statement: Some(_), .. }));
                if prepared {
                    // Postgres now skips the client's messages up to its Sync,
                    // the Parse of its COPY (which fails the same way) first:
                    // the client hears this error in its place.
                    while q.front().is_some_and(|p| !matches!(p, Pending::Sync | Pending::Simple)) {
                        q.pop_front();
                    }
                } else {
                    // The simple Query that follows fails the same way, and
                    // the client hears it then.
                    forward = false;
                    while q.front().is_some_and(|p| !matches!(p, Pending::InjectedSync)) {
                        q.pop_front();
                    }
                }
            }
            b'E' if matches!(q.front(), Some(Pending::InjectedAbort)) => forward = false,
            b'E' => {
                self.copy_out = None;
                if let Some((sqlstate, message)) = queue.take_replacement() {
                    if forward {
                        out.put_slice(&protocol::error_response("ERROR", sqlstate, &message));
                    }
                    forward = false;
                }
                if matches!(q.front(), Some(Pending::Simple)) {
                    self.current = self.empty.clone();
                } else {
                    // Postgres skips everything up to Sync after an error.
                    while q.front().is_some_and(|p| !matches!(p, Pending::Sync | Pending::Simple)) {
                        q.pop_front();
                    }
                }
            }
            b'Z' if matches!(q.front(), Some(Pending::InjectedSync | Pending::InjectedAbort)) => {
                q.pop_front();
                return Ok(Answer::OwnReady);
            }
            b'Z' => {
                self.copy_out = None;
                self.tally.flush(&self.enc.metrics);
                while let Some(p) = q.pop_front() {
                    if matches!(p, Pending::Sync | Pending::Simple) {
                        break;
                    }
                }
                forward = true;
                self.current = self.empty.clone();
                if std::mem::take(&mut self.poisoned) && body == b"T" {
                    // The client got an error inside a transaction that
                    // Postgres still thinks healthy: it is failed now.
                    queue.request_abort();
                    out.put_slice(&[b'Z', 0, 0, 0, 5, b'E']);
                    return Ok(Answer::Relayed);
                }
                if body == b"I" {
                    // Outside a transaction no portal survives.
                    self.portals.clear();
                    self.copy_portals.clear();
                    if std::mem::take(&mut self.ddl) {
                        out.put_slice(&msg.frame);
                        return Ok(Answer::RefreshCatalog);
                    }
                }
            }
            // Notices, notifications and parameter changes come at any time.
            b'N' | b'A' | b'S' => forward = true,
            _ => {}
        }
        if forward {
            out.put_slice(&msg.frame);
        }
        Ok(Answer::Relayed)
    }

    fn end_of_result(&mut self, q: &mut std::collections::VecDeque<Pending>) {
        match q.front() {
            Some(Pending::Execute { .. }) => {
                q.pop_front();
            }
            Some(Pending::Simple) => self.current = self.empty.clone(),
            _ => {}
        }
    }

    /// The plan of a portal bound from `statement` with result `formats`,
    /// under the policy in force now.
    fn plan(&self, statement: &Bytes, formats: &ResultFormats) -> Plan {
        match self.statements.get(statement) {
            Some(sources) if !sources.is_empty() => sources
                .iter()
                .filter_map(|(index, column)| {
                    self.field(*index, column.clone(), format(formats.get(*index)))
                })
                .collect(),
            _ => self.empty.clone(),
        }
    }

    /// What the role gets of `column` at `index`; `None` when its values go
    /// out as they are stored (ciphertext access).
    fn field(
        &self,
        index: usize,
        column: Arc<EncryptedColumn>,
        format: Format,
    ) -> Option<PlanField> {
        let grant = self.enc.access.load().resolve(&self.role, &column).clone();
        let action = match grant.level {
            AccessLevel::Full => Action::Decrypt,
            AccessLevel::Masked => Action::Mask(grant.mask.unwrap_or_else(|| Arc::new(Mask::Null))),
            AccessLevel::Ciphertext => return None,
            AccessLevel::Deny => Action::Deny,
        };
        Some(PlanField { index, column, format, action })
    }

    /// The backstop for a result that shows a denied column: the client gets
    /// 42501 in its place, and the rest of the answer is dropped.
    fn deny(&mut self, column: &EncryptedColumn, out: &mut BytesMut) {
        let message = crate::access::denied_message(&self.role, &column.name);
        tracing::info!(column = %column.name, "result refused: column denied to the role");
        self.enc.metrics.denied();
        out.put_slice(&protocol::error_response("ERROR", INSUFFICIENT_PRIVILEGE, &message));
        self.poisoned = true;
    }

    /// Appends the DataRow `body` with its encrypted values decrypted, or, if
    /// one does not decrypt, an ErrorResponse (and drops the rest of the
    /// answer).
    fn row(
        &mut self,
        body: &[u8],
        plan: &[PlanField],
        out: &mut BytesMut,
    ) -> Result<(), Malformed> {
        let mut r = messages::Reader::new(body);
        let n = r.count().ok_or(Malformed)?;
        let at = messages::begin(out, b'D');
        out.put_i16(n as i16);
        let mut next = plan.iter().peekable();
        for i in 0..n {
            let value = r.value().ok_or(Malformed)?;
            let field = next.next_if(|f| f.index == i);
            match (value, field) {
                (_, Some(f)) if matches!(f.action, Action::Deny) => {
                    out.truncate(at);
                    let column = f.column.clone();
                    self.deny(&column, out);
                    return Ok(());
                }
                (Some(v), Some(f)) => match self.decrypt(v, f) {
                    Ok(true) => {
                        out.put_i32(self.encoded.len() as i32);
                        out.put_slice(&self.encoded);
                    }
                    Ok(false) => out.put_i32(-1),
                    Err(message) => {
                        out.truncate(at);
                        tracing::warn!(column = %f.column.name, reason = %message, "stored value does not decrypt");
                        out.put_slice(&protocol::error_response("ERROR", DATA_CORRUPTED, &message));
                        self.poisoned = true;
                        return Ok(());
                    }
                },
                (Some(v), None) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
                (None, _) => out.put_i32(-1),
            }
        }
        messages::end(out, at);
        Ok(())
    }

    /// Decrypts one stored value into `self.encoded`, in the field's format,
    /// or its mask (text); false when the mask is NULL.
    fn decrypt(&mut self, stored: &[u8], f: &PlanField) -> Result<bool, String> {
        let c = &f.column;
        let envelope = match f.format {
            Format::Binary => stored,
            Format::Text => {
                decode_bytea_text(stored, &mut self.envelope).ok_or_else(|| {
                    format!("column {}: the stored value is not bytea text", c.name)
                })?;
                &self.envelope
            }
        };
        let timed = self.tally.sample().then(std::time::Instant::now);
        self.enc
            .keyring
            .load()
            .decrypt(&c.aad, envelope, &mut self.plain)
            .map_err(|e| format!("column {}: {e}", c.name))?;
        if let Some(started) = timed {
            self.enc.metrics.observe(started.elapsed().as_secs_f64());
        }
        self.tally.decrypted(c.id);
        wipe(&mut self.encoded);
        let shown = match &f.action {
            Action::Mask(m) => {
                self.tally.masked(c.id);
                // Masks work on the value's text, which is its canonical
                // form for every type but bytea.
                let bytea = c.logical_type == crate::crypto::LogicalType::Bytea;
                let text = if bytea {
                    // `\x` hex: cannot fail.
                    self.envelope.clear();
                    let _ = codec::to_text(c.logical_type, &self.plain, &mut self.envelope);
                    &self.envelope
                } else {
                    &self.plain
                };
                // Only the hash mask needs a key.
                let keyring = &self.enc.keyring;
                let hash =
                    |t: &[u8]| keyring.load().readable(&c.key).first().map(|k| k.mask_hash(t));
                let shown = mask::apply(m, text, hash, &mut self.encoded);
                if bytea {
                    wipe(&mut self.envelope);
                }
                Ok(shown)
            }
            _ => codec::encode(c.logical_type, f.format, &self.plain, &mut self.encoded)
                .map(|()| true)
                .map_err(|e| format!("column {}: {e}", c.name)),
        };
        // The plaintext goes no further than its encoding, or its mask.
        wipe(&mut self.plain);
        shown
    }
}

/// Zeroes what `buf` holds and empties it. Only the used part: every value is
/// wiped after its use, so the spare capacity holds no plaintext (the whole
/// capacity is zeroized when the session's `Backend` drops).
fn wipe(buf: &mut Vec<u8>) {
    buf.as_mut_slice().zeroize();
    buf.clear();
}

fn format(code: i16) -> Format {
    Format::from_code(code).unwrap_or(Format::Text)
}

/// Decodes bytea in its text output (`\x` hex, or the escape format when a
/// session sets `bytea_output = escape`) into `out`.
pub(super) fn decode_bytea_text(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    if let Some(hex) = text.strip_prefix(b"\\x") {
        return crate::hex::decode_into(hex, out);
    }
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'\\' {
            out.push(b);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', more @ ..] => {
                out.push(b'\\');
                rest = more;
            }
            [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', more @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = more;
            }
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::decode_bytea_text;

    #[test]
    fn bytea_text_decodes_in_both_output_formats() {
        let mut out = Vec::new();
        decode_bytea_text(b"\\x5057ff00", &mut out).unwrap();
        assert_eq!(out, [0x50, 0x57, 0xff, 0x00]);
        decode_bytea_text(b"PW\\377\\000\\\\", &mut out).unwrap();
        assert_eq!(out, [0x50, 0x57, 0xff, 0x00, b'\\']);
        decode_bytea_text(b"\\x0123456789abcdefABCDEF", &mut out).unwrap();
        assert_eq!(out, [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xab, 0xcd, 0xef]);
        for bad in [&b"\\x5"[..], b"\\xzz", b"\\x0g", b"\\x/0", b"\\x:0", b"\\9", b"\\"] {
            assert!(decode_bytea_text(bad, &mut out).is_none(), "{bad:?}");
        }
    }
}
