//! An audit record and its JSON line (DESIGN.md, "Audit record").
//!
//! Records are built by sessions with owned or shared (`Arc`) parts and no
//! formatting; the writer turns them into JSON, in one fixed field order, so
//! that the line is its own canonical form for the HMAC.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connect,
    AuthOk,
    AuthFailed,
    Disconnect,
    Statement,
    Denied,
    ConfigReload,
    /// The end of a file (rotation) or of the proxy's run (clean shutdown):
    /// what lets `pgwarden audit verify` tell a complete log from a cut one.
    Seal,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::AuthOk => "auth_ok",
            Event::AuthFailed => "auth_failed",
            Event::Disconnect => "disconnect",
            Event::Statement => "statement",
            Event::Denied => "denied",
            Event::ConfigReload => "config_reload",
            Event::Seal => "seal",
        }
    }

    fn category(self) -> &'static str {
        match self {
            Event::Connect | Event::AuthOk | Event::AuthFailed | Event::Disconnect => {
                "AUTHENTICATION"
            }
            Event::Statement => "DATA_ACCESS",
            Event::Denied => "AUTHORIZATION",
            Event::ConfigReload | Event::Seal => "CONFIGURATION",
        }
    }
}

/// Who a session is: shared by all its records.
#[derive(Debug, Default)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    pub database: String,
    pub application: String,
    pub client_addr: String,
    pub tls: bool,
    /// Its fields as every record of the session writes them, made once.
    pub json: std::sync::OnceLock<String>,
}

impl SessionInfo {
    /// `,"session":…,"user":…,"database":…,"application":…,"client_addr":…,"tls":…`.
    fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let mut out = String::new();
            field_str(&mut out, "session", Some(&self.id));
            // Empty before the startup packet (a client refused in its TLS
            // handshake): unknown, so null.
            let known = |v: &str| !v.is_empty();
            field_str(&mut out, "user", Some(self.user.as_str()).filter(|v| known(v)));
            field_str(&mut out, "database", Some(self.database.as_str()).filter(|v| known(v)));
            field_str(&mut out, "application", Some(&self.application));
            field_str(&mut out, "client_addr", Some(&self.client_addr));
            out.push_str(if self.tls { ",\"tls\":true" } else { ",\"tls\":false" });
            out
        })
    }
}

/// A statement's text as the audit log shows it, shared by every execution
/// of a prepared statement.
#[derive(Debug, Default)]
pub struct Statement {
    pub text: String,
    pub fingerprint: String,
    /// Registered tables it touches (known on the encrypted database only).
    pub tables: Vec<String>,
    /// Encrypted columns it reads or writes.
    pub encrypted_columns: Vec<String>,
    /// The most restrictive access the role has to the columns it reads.
    pub access: Option<&'static str>,
    /// Its fields as every execution's record writes them, made once: those
    /// before `params`, and those after it.
    pub json: std::sync::OnceLock<(String, String)>,
}

impl Statement {
    fn json(&self) -> &(String, String) {
        self.json.get_or_init(|| {
            let (mut before, mut after) = (String::new(), String::new());
            field_str(&mut before, "statement", Some(&self.text));
            field_str(&mut before, "fingerprint", Some(&self.fingerprint));
            field_list(&mut after, "tables", &self.tables);
            field_list(&mut after, "encrypted_columns", &self.encrypted_columns);
            field_str(&mut after, "access", self.access);
            (before, after)
        })
    }
}

/// One audit record before it is chained.
#[derive(Debug)]
pub struct Record {
    pub ts: SystemTime,
    pub event: Event,
    pub session: Option<Arc<SessionInfo>>,
    /// simple | extended | function.
    pub protocol: Option<&'static str>,
    pub statement: Option<Arc<Statement>>,
    /// `redacted` when the Execute had parameters (their values never
    /// appear), else none.
    pub params: Option<&'static str>,
    pub rows: Option<u64>,
    pub duration_us: Option<u64>,
    /// ok | error | skipped (not run: an earlier statement failed) |
    /// suspended | denied | refused.
    pub outcome: &'static str,
    pub sqlstate: Option<[u8; 5]>,
    /// Why: the denial's reason, the seal's kind, the disconnect's end.
    pub reason: Option<&'static str>,
}

impl Record {
    pub fn new(event: Event, session: Option<Arc<SessionInfo>>, outcome: &'static str) -> Self {
        Self {
            ts: SystemTime::now(),
            event,
            session,
            protocol: None,
            statement: None,
            params: None,
            rows: None,
            duration_us: None,
            outcome,
            sqlstate: None,
            reason: None,
        }
    }

    pub fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn fingerprint(&self) -> Option<&str> {
        self.statement.as_deref().map(|s| s.fingerprint.as_str())
    }

    fn severity(&self) -> &'static str {
        match (self.event, self.outcome) {
            (Event::Denied | Event::AuthFailed, _) => "WARNING",
            (_, "error") => "ERROR",
            _ => "INFO",
        }
    }

    /// Appends the record's JSON, up to and including `"prev":"…"` and the
    /// closing brace: the canonical text the MAC covers.
    ///
    /// Written piece by piece, without `core::fmt`: this runs once per
    /// audited statement on the writer thread.
    pub fn write_canonical(&self, seq: u64, prev: &str, out: &mut String) {
        out.reserve(LINE_HINT);
        out.push_str("{\"ts\":\"");
        write_timestamp(self.ts, out);
        out.push_str("\",\"seq\":");
        out.push_str(itoa::Buffer::new().format(seq));
        out.push_str(",\"event\":\"");
        out.push_str(self.event.as_str());
        out.push_str("\",\"category\":\"");
        out.push_str(self.event.category());
        out.push_str("\",\"severity\":\"");
        out.push_str(self.severity());
        out.push('"');
        out.push_str(match self.session.as_deref() {
            Some(s) => s.json(),
            None => {
                ",\"session\":null,\"user\":null,\"database\":null,\"application\":null,\
                 \"client_addr\":null,\"tls\":null"
            }
        });
        field_str(out, "protocol", self.protocol);
        let st = self.statement.as_deref().map(Statement::json);
        out.push_str(st.map_or(",\"statement\":null,\"fingerprint\":null", |(before, _)| before));
        field_str(out, "params", self.params);
        out.push_str(
            st.map_or(",\"tables\":[],\"encrypted_columns\":[],\"access\":null", |(_, after)| {
                after
            }),
        );
        field_num(out, "rows", self.rows);
        field_num(out, "duration_us", self.duration_us);
        field_str(out, "outcome", Some(self.outcome));
        let sqlstate = self.sqlstate.as_ref().and_then(|s| std::str::from_utf8(s).ok());
        field_str(out, "sqlstate", sqlstate);
        out.push_str(",\"threats\":[]");
        field_str(out, "reason", self.reason);
        out.push_str(",\"prev\":\"");
        out.push_str(prev);
        out.push_str("\"}");
    }
}

/// Room for a typical line (a statement record is ~700 bytes).
const LINE_HINT: usize = 1024;

/// `,"name":`.
fn field_name(out: &mut String, name: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
}

fn field_str(out: &mut String, name: &str, value: Option<&str>) {
    field_name(out, name);
    match value {
        Some(v) => escape(v, out),
        None => out.push_str("null"),
    }
}

fn field_num(out: &mut String, name: &str, value: Option<u64>) {
    field_name(out, name);
    match value {
        Some(v) => out.push_str(itoa::Buffer::new().format(v)),
        None => out.push_str("null"),
    }
}

fn field_list(out: &mut String, name: &str, values: &[String]) {
    field_name(out, name);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(v, out);
    }
    out.push(']');
}

/// `ts` as RFC 3339 in UTC with microseconds, `2026-12-03T18:00:00.123456Z`
/// (what `humantime::format_rfc3339_micros` writes; tested against it).
/// Times before 1970 are written as 1970-01-01T00:00:00.000000Z.
pub(super) fn write_timestamp(ts: SystemTime, out: &mut String) {
    let since = ts.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (year, month, day) = crate::crypto::codec::datetime::civil_from_unix_days(days);
    let [year, month, day] = [year, month, day].map(|v| u64::try_from(v).unwrap_or(0));
    let in_day = secs % 86_400;
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, in_day / 3600);
    put(14, 2, in_day / 60 % 60);
    put(17, 2, in_day % 60);
    put(20, 6, u64::from(since.subsec_micros()));
    // Only ASCII digits were written into an ASCII template.
    out.push_str(std::str::from_utf8(&b).unwrap_or("1970-01-01T00:00:00.000000Z"));
}

/// A JSON string literal.
pub fn escape(s: &str, out: &mut String) {
    out.push('"');
    // A scan of bytes: every character to escape starts with an ASCII byte
    // or, for U+2028 and U+2029, with 0xE2 0x80; the rest is copied in runs.
    let bytes = s.as_bytes();
    let mut from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (len, esc) = match bytes[i] {
            b'"' => (1, "\\\""),
            b'\\' => (1, "\\\\"),
            b'\n' => (1, "\\n"),
            b'\r' => (1, "\\r"),
            b'\t' => (1, "\\t"),
            0..=0x1f => (1, ""),
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                (3, "")
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[from..i]);
        if esc.is_empty() {
            let c = s[i..].chars().next().map_or(0, |c| c as u32);
            let _ = write!(out, "\\u{c:04x}"); // rare: controls, U+2028/2029
        } else {
            out.push_str(esc);
        }
        i += len;
        from = i;
    }
    out.push_str(&s[from..]);
    out.push('"');
}
