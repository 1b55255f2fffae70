//! A session's statements from request to answer, for the audit log.
//!
//! The client loop's [`ClientSide`] sees the client's messages (before the
//! rate limit and the encryption pipeline change them) and queues one
//! [`Inflight`] per Query, Execute, FunctionCall and Sync; the other loop's
//! [`ServerSide`] sees what the client is sent and completes them on
//! CommandComplete, EmptyQueryResponse, PortalSuspended, ErrorResponse and
//! ReadyForQuery. Both sides lock the shared queue once per batch, not per
//! message, and queue their records after the batch.
//!
//! Simple protocol: one record per statement of the Query's text, each timed
//! from the Query's first byte; after an error the statements Postgres did
//! not run get `outcome` "skipped". Extended protocol: one record per
//! Execute, carrying the text of the statement its portal was bound from,
//! so a statement prepared once and executed N times appears N times with
//! the same text and fingerprint (the Parse itself is not a record).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::record::{Event, Record, SessionInfo, Statement};
use super::redact::{self, Literals};
use super::Auditor;
use crate::protocol::messages::Reader;

/// What the encryption pipeline learnt of a Query, Parse or Bind it handled.
#[derive(Debug, Default)]
pub struct Seen {
    /// SQLSTATE of the proxy's refusal, when it refused the statement.
    pub refused: Option<&'static str>,
    /// Byte ranges, in the statement's text, of literals bound for encrypted
    /// columns; `None` when the statement was not analysed.
    pub literals: Option<Vec<Range<usize>>>,
    /// Registered tables and encrypted columns the statement uses.
    pub tables: Vec<String>,
    pub columns: Vec<String>,
    /// The most restrictive access the role has to the columns it reads.
    pub access: Option<&'static str>,
}

/// A request waiting for its answer.
#[derive(Debug)]
enum Inflight {
    /// Query: its statements, and how many were answered.
    Simple { statements: Vec<Arc<Statement>>, next: usize, start: u64 },
    /// Execute of a portal bound from `statement`.
    Execute { statement: Option<Arc<Statement>>, params: bool, start: u64 },
    /// FunctionCall.
    Function { start: u64 },
    /// Sync, or a request already answered: ReadyForQuery ends here.
    Sync,
}

/// What both loops of a session share.
pub struct Tracker {
    pub auditor: Arc<Auditor>,
    pub info: Arc<SessionInfo>,
    epoch: Instant,
    inflight: Mutex<VecDeque<Inflight>>,
}

impl Tracker {
    pub fn new(auditor: Arc<Auditor>, info: Arc<SessionInfo>) -> Self {
        Self { auditor, info, epoch: Instant::now(), inflight: Mutex::default() }
    }

    /// Microseconds since the session started: read once per batch.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Inflight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, event: Event, outcome: &'static str) -> Record {
        Record::new(event, Some(self.info.clone()), outcome)
    }
}

/// A portal: the statement it was bound from and whether it had parameters.
type Portal = (Option<Arc<Statement>>, bool);

/// The client loop's side.
pub struct ClientSide {
    /// `statement_literals = "all"`.
    keep_literals: bool,
    statements: HashMap<Bytes, Arc<Statement>>,
    portals: HashMap<Bytes, Portal>,
    /// The unnamed portal, kept apart so that binding it allocates nothing.
    unnamed: Option<Portal>,
    batch: Vec<Inflight>,
    start: u64,
    /// Denials seen in this batch, queued after it.
    pub records: VecDeque<Record>,
}

impl ClientSide {
    pub fn new(keep_literals: bool) -> Self {
        Self {
            keep_literals,
            statements: HashMap::new(),
            portals: HashMap::new(),
            unnamed: None,
            batch: Vec::new(),
            start: 0,
            records: VecDeque::new(),
        }
    }

    pub fn begin_batch(&mut self, tracker: &Tracker) {
        self.start = tracker.now_us();
    }

    fn normalise(&self, text: &[u8], seen: Option<&Seen>) -> Vec<Arc<Statement>> {
        let sql = String::from_utf8_lossy(text);
        // Without the pipeline no column is encrypted: every literal may be kept.
        let literals = match seen {
            None => Literals { keep: self.keep_literals, encrypted: Some(&[]) },
            Some(s) => Literals { keep: self.keep_literals, encrypted: s.literals.as_deref() },
        };
        redact::statements(&sql, &literals)
            .into_iter()
            .map(|n| {
                Arc::new(Statement {
                    text: n.text,
                    fingerprint: n.fingerprint,
                    tables: seen.map(|s| s.tables.clone()).unwrap_or_default(),
                    encrypted_columns: seen.map(|s| s.columns.clone()).unwrap_or_default(),
                    access: seen.and_then(|s| s.access),
                    json: Default::default(),
                })
            })
            .collect()
    }

    /// A message the client sent; `seen`: what the pipeline learnt of it.
    pub fn message(&mut self, tracker: &Tracker, tag: u8, body: &[u8], seen: Option<&Seen>) {
        let start = self.start;
        match tag {
            b'Q' => {
                let text = Reader::new(body).cstr().unwrap_or_default();
                let statements = self.normalise(text, seen);
                self.denied(tracker, seen, statements.first(), "simple");
                self.batch.push(Inflight::Simple { statements, next: 0, start });
            }
            b'P' => {
                let mut r = Reader::new(body);
                let name = r.cstr().unwrap_or_default();
                let text = r.cstr().unwrap_or_default();
                // A Parse holds one statement; more is Postgres' error to report.
                let statement = self.normalise(text, seen).into_iter().next();
                self.denied(tracker, seen, statement.as_ref(), "extended");
                match statement {
                    Some(s) => self.statements.insert(Bytes::copy_from_slice(name), s),
                    None => self.statements.remove(name),
                };
            }
            b'B' => {
                let mut r = Reader::new(body);
                let portal = r.cstr().unwrap_or_default();
                let name = r.cstr().unwrap_or_default();
                let formats = r.i16().unwrap_or(0).max(0) as usize;
                let _ = r.take(formats * 2);
                let params = r.i16().unwrap_or(0) > 0;
                let statement = self.statements.get(name).cloned();
                self.denied(tracker, seen, statement.as_ref(), "extended");
                if portal.is_empty() {
                    self.unnamed = Some((statement, params));
                } else {
                    self.portals.insert(Bytes::copy_from_slice(portal), (statement, params));
                }
            }
            b'E' => {
                let portal = Reader::new(body).cstr().unwrap_or_default();
                let (statement, params) = if portal.is_empty() {
                    self.unnamed.clone()
                } else {
                    self.portals.get(portal).cloned()
                }
                .unwrap_or((None, false));
                self.batch.push(Inflight::Execute { statement, params, start });
            }
            b'C' => match body.split_first() {
                Some((b'S', name)) => {
                    self.statements.remove(name.strip_suffix(b"\0").unwrap_or(name));
                }
                Some((_, name)) => {
                    let name = name.strip_suffix(b"\0").unwrap_or(name);
                    if name.is_empty() {
                        self.unnamed = None;
                    } else {
                        self.portals.remove(name);
                    }
                }
                None => {}
            },
            b'F' => self.batch.push(Inflight::Function { start }),
            b'S' => self.batch.push(Inflight::Sync),
            _ => {}
        }
    }

    /// A statement the pipeline refused for column access becomes a
    /// `denied` record (its answer, the 42501, a `statement` record).
    fn denied(
        &mut self,
        tracker: &Tracker,
        seen: Option<&Seen>,
        statement: Option<&Arc<Statement>>,
        protocol: &'static str,
    ) {
        let Some(state) = seen.and_then(|s| s.refused) else { return };
        if state != "42501" {
            return;
        }
        let mut r = tracker.record(Event::Denied, "denied").reason("column_access");
        r.protocol = Some(protocol);
        r.statement = statement.cloned();
        r.sqlstate = state.as_bytes().try_into().ok();
        self.records.push_back(r);
    }

    /// A Query or round trip the rate limit refused (53400).
    pub fn rate_limited(&mut self, tracker: &Tracker, tag: u8) {
        let mut r = tracker.record(Event::Denied, "denied").reason("rate_limit");
        r.protocol = Some(if tag == b'Q' { "simple" } else { "extended" });
        r.sqlstate = Some(*b"53400");
        self.records.push_back(r);
    }

    /// Hands this batch's requests to the other side; call before the batch
    /// is written to Postgres, so that no answer can come first.
    pub fn commit(&mut self, tracker: &Tracker) {
        if !self.batch.is_empty() {
            tracker.lock().extend(self.batch.drain(..));
        }
    }
}

/// The other loop's side.
#[derive(Default)]
pub struct ServerSide {
    /// DataRows of the result being sent.
    rows: u64,
    pub records: VecDeque<Record>,
}

/// A batch of answers, holding the shared queue's lock.
pub struct Answers<'a> {
    side: &'a mut ServerSide,
    tracker: &'a Tracker,
    queue: MutexGuard<'a, VecDeque<Inflight>>,
    now: u64,
}

impl ServerSide {
    pub fn batch<'a>(&'a mut self, tracker: &'a Tracker) -> Answers<'a> {
        Answers { now: tracker.now_us(), queue: tracker.lock(), side: self, tracker }
    }
}

impl Answers<'_> {
    /// A message the client is sent.
    pub fn message(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'D' => self.side.rows += 1,
            b'C' => {
                let rows = command_rows(body);
                self.complete("ok", rows, None);
            }
            b'I' | b'V' => self.complete("ok", None, None),
            b's' => {
                let rows = Some(self.side.rows);
                self.complete("suspended", rows, None);
            }
            b'E' => self.fail(sqlstate(body)),
            b'Z' => self.ready(),
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one record, all needed")]
    fn emit(
        &mut self,
        protocol: &'static str,
        statement: Option<Arc<Statement>>,
        params: bool,
        start: u64,
        outcome: &'static str,
        rows: Option<u64>,
        sqlstate: Option<[u8; 5]>,
    ) {
        let mut r = self.tracker.record(Event::Statement, outcome);
        r.protocol = Some(protocol);
        r.statement = statement;
        r.params = params.then_some("redacted");
        r.rows = rows;
        r.duration_us = (outcome != "skipped").then(|| self.now.saturating_sub(start));
        r.sqlstate = sqlstate;
        self.side.records.push_back(r);
    }

    fn complete(&mut self, outcome: &'static str, rows: Option<u64>, sqlstate: Option<[u8; 5]>) {
        self.side.rows = 0;
        match self.queue.front_mut() {
            Some(Inflight::Execute { .. }) => {
                if let Some(Inflight::Execute { statement, params, start }) = self.queue.pop_front()
                {
                    self.emit("extended", statement, params, start, outcome, rows, sqlstate);
                }
            }
            Some(Inflight::Simple { statements, next, start }) => {
                let statement = statements.get(*next).cloned();
                let start = *start;
                *next += 1;
                self.emit("simple", statement, false, start, outcome, rows, sqlstate);
            }
            Some(f @ Inflight::Function { .. }) => {
                if let Inflight::Function { start } = std::mem::replace(f, Inflight::Sync) {
                    self.emit("function", None, false, start, outcome, rows, sqlstate);
                }
            }
            Some(Inflight::Sync) | None => {}
        }
    }

    fn fail(&mut self, sqlstate: Option<[u8; 5]>) {
        if let Some(Inflight::Simple { statements, next, start }) = self.queue.front_mut() {
            let (failed, rest) = match statements.get(*next..) {
                Some([failed, rest @ ..]) => (Some(failed.clone()), rest.to_vec()),
                _ => (None, Vec::new()),
            };
            let start = *start;
            *next = statements.len();
            self.side.rows = 0;
            self.emit("simple", failed, false, start, "error", None, sqlstate);
            for s in rest {
                self.emit("simple", Some(s), false, start, "skipped", None, None);
            }
            return;
        }
        self.complete("error", None, sqlstate);
    }

    /// ReadyForQuery: what was not answered was not run.
    fn ready(&mut self) {
        self.side.rows = 0;
        while let Some(i) = self.queue.pop_front() {
            match i {
                Inflight::Execute { statement, params, start } => {
                    self.emit("extended", statement, params, start, "skipped", None, None);
                }
                Inflight::Simple { statements, next, start } => {
                    for s in statements.into_iter().skip(next) {
                        self.emit("simple", Some(s), false, start, "skipped", None, None);
                    }
                    break;
                }
                Inflight::Function { .. } | Inflight::Sync => break,
            }
        }
    }
}

/// Rows of a CommandComplete tag ("SELECT 5", "INSERT 0 3"); none for tags
/// without a count ("CREATE TABLE").
fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = Reader::new(body).cstr()?;
    let last = tag.rsplit(|&b| b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// The SQLSTATE of an ErrorResponse.
fn sqlstate(body: &[u8]) -> Option<[u8; 5]> {
    let mut r = Reader::new(body);
    loop {
        let field = *r.take(1)?.first()?;
        if field == 0 {
            return None;
        }
        let value = r.cstr()?;
        if field == b'C' {
            return value.try_into().ok();
        }
    }
}

impl Seen {
    /// Takes what the audit log needs from a statement's analysis; `level`:
    /// the role's access to a column.
    pub fn saw(
        &mut self,
        analysis: &crate::sql::Analysis,
        level: impl Fn(&crate::sql::EncryptedColumn) -> pgwarden_config::AccessLevel,
    ) {
        self.literals = Some(analysis.literals.iter().map(|l| l.range.clone()).collect());
        self.tables = analysis.tables.clone();
        let mut columns: Vec<String> = analysis
            .reads
            .iter()
            .chain(&analysis.writes)
            .chain(&analysis.columns)
            .map(|c| c.name.clone())
            .collect();
        columns.sort();
        columns.dedup();
        self.columns = columns;
        self.access = analysis.reads.iter().map(|c| level(c)).max().map(|l| l.as_str());
    }
}

/// Calls `f` with the tag and body of every whole message in `buf`.
pub fn frames(buf: &[u8], mut f: impl FnMut(u8, &[u8])) {
    let mut at = 0usize;
    while let Some(header) = buf.get(at..at + 5) {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(body) = buf.get(at + 5..at + 1 + len.max(4)) else { return };
        f(header[0], body);
        at += 1 + len.max(4);
    }
}
