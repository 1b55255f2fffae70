//! Client → Postgres: Query and Parse are analysed, literals bound for
//! encrypted columns are encrypted in the text, Bind values bound for them
//! are canonicalised and encrypted; a statement that cannot be supported is
//! replaced by its refusal and nothing of it reaches Postgres.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::copy::CopyIn;
use super::{raise, BoundParam, Encryption, Pending, Queue};
use crate::crypto::{codec, Format, LogicalType, Mode};
use crate::protocol::messages::{self, Bind, Parse, Reader, ResultFormats};
use crate::protocol::Message;
use crate::sql::{self, CopyDirection, CopySpec, EncryptedColumn, ParamSite, Refusal};
use pgwarden_config::AccessLevel::Ciphertext;

/// SQLSTATE of a value that is not valid for its column's logical type.
const INVALID_TEXT: &str = "22P02";
/// SQLSTATE of a key that cannot be used (no ACTIVE version).
const KEY_UNAVAILABLE: &str = "55000";
/// SQLSTATE of a column the role's policy does not allow.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A refusal on its way to the client: SQLSTATE and message.
pub struct Refused(pub &'static str, pub String);

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        Refused(r.sqlstate(), r.to_string())
    }
}

/// One session's frontend side.
pub struct Frontend {
    enc: Arc<Encryption>,
    /// The login role: whose policy applies.
    role: Arc<str>,
    /// The encrypted columns each prepared statement reads and writes,
    /// checked again at every Bind against the policy then in force.
    uses: HashMap<Bytes, Arc<Uses>>,
    /// Prepared statements with parameters bound for encrypted columns.
    statements: HashMap<Bytes, Arc<[BoundParam]>>,
    /// After a refusal inside an extended-protocol batch: drop everything up
    /// to Sync, as Postgres does after an error.
    skipping: bool,
    no_params: Arc<[ParamSite]>,
    no_bound: Arc<[BoundParam]>,
    /// Prepared COPY FROM STDIN statements into encrypted columns, and the
    /// portals bound from them.
    copy_statements: HashMap<Bytes, Arc<CopySpec>>,
    copy_portals: HashMap<Bytes, Arc<CopySpec>>,
    /// The COPY FROM STDIN in progress, if its rows need encrypting.
    copy_in: Option<CopyIn>,
    /// The COPY in progress was failed by the proxy: drop the client's rest.
    copy_failed: bool,
    /// Longest COPY row accepted.
    max_row: usize,
    /// Values encrypted, reported at each Query and Sync.
    tally: crate::metrics::ColumnTally,
    /// What the audit log learns of the Query, Parse or Bind just handled;
    /// `None` when the audit log is off.
    pub audit: Option<crate::audit::track::Seen>,
}

impl Frontend {
    pub fn new(enc: Arc<Encryption>, max_row: usize, role: Arc<str>) -> Self {
        Self {
            enc,
            role,
            uses: HashMap::new(),
            statements: HashMap::new(),
            skipping: false,
            no_params: Arc::new([]),
            no_bound: Arc::new([]),
            copy_statements: HashMap::new(),
            copy_portals: HashMap::new(),
            copy_in: None,
            copy_failed: false,
            max_row,
            tally: crate::metrics::ColumnTally::default(),
            audit: None,
        }
    }

    /// Appends what to send Postgres for `msg` to `out` and records what it
    /// will answer in `queue`. False when the queue is full.
    pub fn handle(&mut self, msg: Message, queue: &Queue, out: &mut BytesMut) -> bool {
        let forward = |out: &mut BytesMut| out.put_slice(&msg.frame);
        if msg.tag != b'X' && queue.take_abort() {
            // The failed transaction's error reaches no one; what follows
            // meets an aborted transaction, as after any error.
            let abort = raise("25P02", "transaction aborted by pgwarden after a refused result");
            messages::query(&abort, out);
            if !queue.push(Pending::InjectedAbort) {
                return false;
            }
        }
        if self.skipping && !matches!(msg.tag, b'S' | b'X') {
            return true;
        }
        // A new statement ends any COPY (Sync and Flush may come in the middle
        // of one, sent by the extended protocol before the rows).
        if matches!(msg.tag, b'Q' | b'P' | b'B' | b'F') {
            self.copy_in = None;
            self.copy_failed = false;
        }
        let pending = match msg.tag {
            b'Q' => {
                let ok = self.query(&msg, queue, out);
                self.tally.flush(&self.enc.metrics);
                return ok;
            }
            b'd' | b'c' if self.copy_failed => return true,
            b'd' if self.copy_in.is_some() => {
                self.copy_data(&msg, queue, out);
                return true;
            }
            b'c' if self.copy_in.is_some() => {
                let keyring = self.enc.keyring.load();
                let done = self.copy_in.as_mut().map(|c| c.done(&keyring, out));
                self.copy_in = None;
                match done {
                    Some(Err(refused)) => self.fail_copy(refused, queue, out),
                    _ => forward(out),
                }
                return true;
            }
            b'F' => {
                forward(out);
                Pending::Simple
            }
            b'P' => return self.parse(&msg, queue, out),
            b'B' => return self.bind(&msg, queue, out),
            b'D' => {
                forward(out);
                match msg.body().split_first() {
                    Some((b'S', name)) => {
                        let name = msg.frame.slice(6..6 + name.len().saturating_sub(1));
                        let params = self.statements.get(&name).cloned();
                        let params = params.unwrap_or_else(|| self.no_bound.clone());
                        Pending::DescribeStatement {
                            name,
                            params,
                            injected: false,
                            copy_out: false,
                        }
                    }
                    // Postgres answers a malformed Describe with an error.
                    _ => Pending::DescribePortal,
                }
            }
            b'E' => {
                forward(out);
                let portal = Reader::new(msg.body()).cstr().unwrap_or_default();
                let portal = msg.frame.slice(5..5 + portal.len());
                if let Some(spec) = self.copy_portals.get(&portal) {
                    self.copy_in = self.copy_in(spec.clone());
                }
                Pending::Execute { portal }
            }
            b'C' => {
                forward(out);
                let statement = match msg.body().split_first() {
                    Some((b'S', name)) => {
                        let name = msg.frame.slice(6..6 + name.len().saturating_sub(1));
                        self.statements.remove(&name);
                        self.uses.remove(&name);
                        Some(name)
                    }
                    _ => None,
                };
                Pending::Close { statement }
            }
            b'S' => {
                self.tally.flush(&self.enc.metrics);
                self.skipping = false;
                forward(out);
                Pending::Sync
            }
            _ => {
                forward(out);
                return true;
            }
        };
        queue.push(pending)
    }

    /// A simple Query: passed on as it is, rewritten, or replaced by its
    /// refusal. A COPY TO STDOUT of encrypted columns is preceded by a
    /// Describe of its source, a COPY FROM STDIN readies its rows' encryption.
    fn query(&mut self, msg: &Message, queue: &Queue, out: &mut BytesMut) -> bool {
        let text = Reader::new(msg.body()).cstr().unwrap_or_default();
        match self.prepare(text) {
            Ok(Prepared { sql, copy, .. }) => {
                if let Some(spec) = copy {
                    match &spec.direction {
                        CopyDirection::In(_) => self.copy_in = self.copy_in(spec),
                        CopyDirection::Out(source) => {
                            let source = source.clone();
                            messages::describe_unnamed(&source, out);
                            let ok = queue.push(Pending::CopyParse)
                                && queue.push(Pending::CopyDescribe { spec, statement: None })
                                && queue.push(Pending::InjectedSync);
                            if !ok {
                                return false;
                            }
                        }
                    }
                }
                match sql {
                    None => out.put_slice(&msg.frame),
                    Some(sql) => messages::query(&sql, out),
                }
            }
            Err(Refused(state, message)) => {
                tracing::info!(sqlstate = state, reason = %message, "statement refused");
                if let Some(seen) = self.audit.as_mut() {
                    seen.refused = Some(state);
                }
                messages::query(&raise(state, &message), out);
            }
        }
        queue.push(Pending::Simple)
    }

    /// One CopyData of a COPY FROM STDIN into encrypted columns.
    fn copy_data(&mut self, msg: &Message, queue: &Queue, out: &mut BytesMut) {
        let keyring = self.enc.keyring.load();
        let Some(copy) = self.copy_in.as_mut() else { return };
        if let Err(refused) = copy.data(msg.body(), &keyring, out) {
            self.fail_copy(refused, queue, out);
        }
    }

    /// Ends the COPY with CopyFail; the client gets `refused` in place of
    /// Postgres' answer to it.
    fn fail_copy(&mut self, Refused(state, message): Refused, queue: &Queue, out: &mut BytesMut) {
        tracing::info!(sqlstate = state, reason = %message, "COPY refused");
        let at = messages::begin(out, b'f');
        messages::put_cstr(out, b"refused by pgwarden");
        messages::end(out, at);
        queue.replace_next_error(state, message);
        self.copy_in = None;
        self.copy_failed = true;
    }

    fn parse(&mut self, msg: &Message, queue: &Queue, out: &mut BytesMut) -> bool {
        let Some(parse) = Parse::decode(msg.body()) else {
            // Postgres answers it with a protocol error.
            out.put_slice(&msg.frame);
            return queue.push(Pending::Parse { injected: false });
        };
        let name = msg.frame.slice(5..5 + parse.name.len());
        let params = match self.prepare(parse.query) {
            Ok(Prepared { sql, params: sites, copy, uses }) => {
                if let Some(spec) = &copy {
                    if let CopyDirection::Out(source) = &spec.direction {
                        // What its rows hold is learnt first, from its source.
                        messages::describe_and_close(source, out);
                        let describe = Pending::CopyDescribe {
                            spec: spec.clone(),
                            statement: Some(name.clone()),
                        };
                        let ok = queue.push(Pending::CopyParse)
                            && queue.push(describe)
                            && queue.push(Pending::CopyClose);
                        if !ok {
                            return false;
                        }
                    }
                }
                match uses {
                    Some(uses) => self.uses.insert(name.clone(), uses),
                    None => self.uses.remove(&name),
                };
                match copy {
                    Some(spec) => self.copy_statements.insert(name.clone(), spec),
                    None => self.copy_statements.remove(&name),
                };
                let mut types = parse.param_types.clone();
                for site in sites.iter() {
                    // The column is bytea in Postgres; the client's declared
                    // type is reported back by ParameterDescription instead.
                    if let Some(t) = types.get_mut(site.index).filter(|t| **t != 0) {
                        *t = pgwarden_config::LogicalType::Bytea.oid();
                    }
                }
                if sql.is_none() && types == parse.param_types {
                    out.put_slice(&msg.frame);
                } else {
                    let parse = Parse { param_types: types, ..parse };
                    let query = sql.as_deref().map_or(parse.query, str::as_bytes);
                    parse.encode(query, out);
                }
                if sites.is_empty() {
                    self.no_bound.clone()
                } else {
                    let declared = |i: usize| parse.param_types.get(i).copied().unwrap_or(0);
                    sites
                        .iter()
                        .map(|s| BoundParam {
                            index: s.index,
                            column: s.column.clone(),
                            declared_oid: declared(s.index),
                        })
                        .collect()
                }
            }
            Err(refused) => return self.refuse(refused, queue, out),
        };
        if params.is_empty() {
            self.statements.remove(&name);
        } else {
            self.statements.insert(name.clone(), params.clone());
        }
        // Describe every statement: the backend side learns its result
        // columns from the answer, which it swallows.
        messages::describe_statement(&name, out);
        let copy_out = self
            .copy_statements
            .get(&name)
            .is_some_and(|c| matches!(c.direction, CopyDirection::Out(_)));
        queue.push(Pending::Parse { injected: false })
            && queue.push(Pending::DescribeStatement { name, params, injected: true, copy_out })
    }

    fn bind(&mut self, msg: &Message, queue: &Queue, out: &mut BytesMut) -> bool {
        let Some(bind) = Bind::decode(msg.body()) else {
            out.put_slice(&msg.frame);
            return queue.push(Pending::Bind {
                portal: Bytes::new(),
                statement: Bytes::new(),
                formats: ResultFormats::default(),
                injected: false,
            });
        };
        let offset = |s: &[u8]| s.as_ptr() as usize - msg.frame.as_ptr() as usize;
        let slice = |s: &[u8]| msg.frame.slice(offset(s)..offset(s) + s.len());
        let portal = slice(bind.portal);
        let statement = slice(bind.statement);
        let formats = ResultFormats::new(slice(bind.result_formats));
        // A policy reloaded since the Parse applies from this execution on.
        if let Some(uses) = self.uses.get(&statement) {
            if let Err(refused) = self.check_access(&uses.reads, &uses.writes) {
                return self.refuse(refused, queue, out);
            }
        }
        match self.copy_statements.get(&statement) {
            Some(spec) => self.copy_portals.insert(portal.clone(), spec.clone()),
            None => self.copy_portals.remove(&portal),
        };
        match self.statements.get(&statement).cloned() {
            None => out.put_slice(&msg.frame),
            Some(sites) => match self.encrypt_params(&bind, &sites) {
                Ok(values) => bind.encode_with(&values, out),
                Err(refused) => return self.refuse(refused, queue, out),
            },
        }
        queue.push(Pending::Bind { portal, statement, formats, injected: false })
    }

    /// A COPY FROM STDIN's encryption, for this session's role.
    fn copy_in(&self, spec: Arc<CopySpec>) -> Option<CopyIn> {
        let access = self.enc.access.load();
        let as_stored = |c: &EncryptedColumn| access.resolve(&self.role, c).level == Ciphertext;
        CopyIn::new(spec, self.max_row, self.enc.metrics.clone(), as_stored)
    }

    /// The encrypted values of the parameters bound for encrypted columns.
    fn encrypt_params(
        &mut self,
        bind: &Bind<'_>,
        sites: &[BoundParam],
    ) -> Result<messages::Replaced, Refused> {
        let keyring = self.enc.keyring.load();
        let access = self.enc.access.load();
        // Whether the role writes a column's envelopes as stored, by column
        // id: asked once per column, not once per value.
        let mut as_stored: Vec<Option<bool>> = Vec::new();
        let mut values = Vec::with_capacity(sites.len());
        for site in sites {
            // A count mismatch is Postgres' to report.
            let Some(value) = bind.params.get(site.index) else { continue };
            let Some(value) = value else {
                values.push((site.index, None));
                continue;
            };
            let format = Format::from_code(bind.param_format(site.index)).ok_or_else(|| {
                Refused("08P01", format!("invalid format code for parameter ${}", site.index + 1))
            })?;
            let column = &site.column;
            if as_stored.len() <= column.id {
                as_stored.resize(column.id + 1, None);
            }
            let stored = *as_stored[column.id]
                .get_or_insert_with(|| access.resolve(&self.role, column).level == Ciphertext);
            if stored {
                values.push((site.index, Some(stored_envelope(&keyring, column, format, value)?)));
                continue;
            }
            let declared = LogicalType::from_oid(site.declared_oid);
            let canonical = codec::canonicalize_as(column.logical_type, declared, format, value)
                .map_err(|e| invalid_value(&column.name, e))?;
            let mut envelope = Vec::new();
            encrypt(&keyring, column, &canonical, &mut envelope)?;
            self.tally.encrypted(column.id);
            values.push((site.index, Some(envelope)));
        }
        Ok(values)
    }

    /// Analyses a statement: its text with the literals bound for encrypted
    /// columns encrypted (`None` when nothing changes), and the parameters
    /// bound for encrypted columns.
    fn prepare(&mut self, text: &[u8]) -> Result<Prepared, Refused> {
        let Ok(sql) = std::str::from_utf8(text) else {
            if self.enc.registry.load().may_touch(&String::from_utf8_lossy(text)) {
                return Err(Refused(
                    "0A000",
                    "the statement is not valid UTF-8 and names a table with encrypted \
                     columns; set client_encoding to UTF8"
                        .into(),
                ));
            }
            return Ok(Prepared {
                sql: None,
                params: self.no_params.clone(),
                copy: None,
                uses: None,
            });
        };
        let mut analysis = sql::analyze(sql, &self.enc.registry.load())?;
        self.check_access(&analysis.reads, &analysis.writes)?;
        if let Some(seen) = self.audit.as_mut() {
            let access = self.enc.access.load();
            seen.saw(&analysis, |c| access.resolve(&self.role, c).level);
        }
        let uses = (!analysis.reads.is_empty() || !analysis.writes.is_empty()).then(|| {
            Arc::new(Uses {
                reads: std::mem::take(&mut analysis.reads).into(),
                writes: std::mem::take(&mut analysis.writes).into(),
            })
        });
        let params = if analysis.params.is_empty() {
            self.no_params.clone()
        } else {
            param_sites(analysis.params)?
        };
        let copy = analysis.copy.map(Arc::new);
        if analysis.literals.is_empty() {
            return Ok(Prepared { sql: None, params, copy, uses });
        }
        let keyring = self.enc.keyring.load();
        let access = self.enc.access.load();
        let mut sites: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(analysis.literals.len());
        for lit in &analysis.literals {
            let column = &lit.column;
            if access.resolve(&self.role, column).level == Ciphertext {
                let envelope =
                    stored_envelope(&keyring, column, Format::Text, lit.value.as_bytes())?;
                sites.push((lit.range.clone(), envelope));
                continue;
            }
            let canonical = codec::canonicalize_text(column.logical_type, lit.value.as_bytes())
                .map_err(|e| invalid_value(&column.name, e))?;
            let mut envelope = Vec::new();
            encrypt(&keyring, column, &canonical, &mut envelope)?;
            self.tally.encrypted(column.id);
            sites.push((lit.range.clone(), envelope));
        }
        let sql = sql::rewrite::replace_literals(sql, sites)
            .ok_or_else(|| Refused("0A000", "cannot rewrite the statement".into()))?;
        Ok(Prepared { sql: Some(sql), params, copy, uses })
    }

    /// Refuses (42501) a statement that reads a column the role is denied,
    /// or writes one it may not write.
    fn check_access(
        &self,
        reads: &[Arc<EncryptedColumn>],
        writes: &[Arc<EncryptedColumn>],
    ) -> Result<(), Refused> {
        let access = self.enc.access.load();
        for c in reads {
            if access.resolve(&self.role, c).level == pgwarden_config::AccessLevel::Deny {
                self.enc.metrics.denied();
                return Err(Refused(
                    INSUFFICIENT_PRIVILEGE,
                    crate::access::denied_message(&self.role, &c.name),
                ));
            }
        }
        for c in writes {
            if !access.resolve(&self.role, c).write {
                self.enc.metrics.denied();
                return Err(Refused(
                    INSUFFICIENT_PRIVILEGE,
                    crate::access::write_denied_message(&self.role, &c.name),
                ));
            }
        }
        Ok(())
    }

    /// Sends the refusal in place of the message and skips to Sync.
    fn refuse(
        &mut self,
        Refused(state, message): Refused,
        queue: &Queue,
        out: &mut BytesMut,
    ) -> bool {
        tracing::info!(sqlstate = state, reason = %message, "statement refused");
        if let Some(seen) = self.audit.as_mut() {
            seen.refused = Some(state);
        }
        messages::run_unnamed(&raise(state, &message), out);
        self.skipping = true;
        queue.push(Pending::Parse { injected: true })
            && queue.push(Pending::Bind {
                portal: Bytes::new(),
                statement: Bytes::new(),
                formats: ResultFormats::default(),
                injected: true,
            })
            && queue.push(Pending::Execute { portal: Bytes::new() })
    }
}

/// A statement as it goes to Postgres.
struct Prepared {
    /// The rewritten text; `None` to send the client's unchanged.
    sql: Option<String>,
    params: Arc<[ParamSite]>,
    /// A COPY of encrypted columns.
    copy: Option<Arc<CopySpec>>,
    /// The encrypted columns it reads and writes; `None` when none.
    uses: Option<Arc<Uses>>,
}

/// The encrypted columns a statement reads and writes.
#[derive(Debug)]
struct Uses {
    reads: Arc<[Arc<EncryptedColumn>]>,
    writes: Arc<[Arc<EncryptedColumn>]>,
}

/// Parameters bound for encrypted columns, each once. A parameter bound for
/// two different encrypted columns cannot be encrypted for both.
fn param_sites(found: Vec<ParamSite>) -> Result<Arc<[ParamSite]>, Refused> {
    let mut sites: Vec<ParamSite> = Vec::with_capacity(found.len());
    for p in found {
        match sites.iter().find(|s| s.index == p.index) {
            Some(s) if s.column.name != p.column.name => {
                return Err(Refused(
                    "0A000",
                    format!(
                        "parameter ${} is used with encrypted columns {} and {}, which encrypt \
                         differently; pass the value twice, as two parameters",
                        p.index + 1,
                        s.column.name,
                        p.column.name
                    ),
                ));
            }
            Some(_) => {}
            None => sites.push(p),
        }
    }
    Ok(sites.into())
}

pub(super) fn invalid_value(column: &str, e: codec::CodecError) -> Refused {
    Refused(INVALID_TEXT, format!("invalid input for encrypted column {column}: {e}"))
}

/// What a role with `ciphertext` access writes to `column`: an envelope, as
/// it reads them (bytea, in `format`), stored as it is — so that what backup
/// and ETL roles read they can write back — once it opens under the column's
/// keys and AAD. Anything else (plaintext, another column's envelope, damaged
/// bytes) is refused with 22P02, without the value in the message.
pub(super) fn stored_envelope(
    keyring: &crate::crypto::Keyring,
    column: &sql::EncryptedColumn,
    format: Format,
    value: &[u8],
) -> Result<Vec<u8>, Refused> {
    let refused = || {
        Refused(
            INVALID_TEXT,
            format!(
                "column {} is written as stored by this role (ciphertext access): the value \
                 must be an envelope of this column, as this role reads it",
                column.name
            ),
        )
    };
    let envelope =
        codec::canonicalize_as(LogicalType::Bytea, None, format, value).map_err(|_| refused())?;
    let mut plain = Vec::new();
    let opened = keyring.decrypt(&column.aad, &envelope, &mut plain);
    zeroize::Zeroize::zeroize(&mut plain);
    opened.map_err(|_| refused())?;
    Ok(envelope.into_owned())
}

pub(super) fn encrypt(
    keyring: &crate::crypto::Keyring,
    column: &sql::EncryptedColumn,
    canonical: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    let cipher = keyring
        .active(&column.key)
        .map_err(|e| Refused(KEY_UNAVAILABLE, format!("column {}: {e}", column.name)))?;
    cipher
        .encrypt(Mode::from(column.mode), &column.aad, canonical, out)
        .map_err(|e| Refused(KEY_UNAVAILABLE, format!("column {}: {e}", column.name)))
}
