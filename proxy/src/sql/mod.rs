//! Statement analysis for encrypted columns: which registered tables and
//! columns a statement touches, which literals and parameters must be encrypted
//! for which column, and which uses cannot be supported and must be refused.
//!
//! The analysis fails closed by construction. A generic walk finds *every*
//! reference to an encrypted column anywhere in the statement; a second walk
//! knows the supported shapes (plain projection, `=`/`<>`/`IN`/`IS NULL`
//! against literals or parameters, INSERT VALUES, UPDATE SET, GROUP BY on a
//! deterministic column, ...) and marks the references it accounts for. Any
//! reference left unaccounted — in an ORDER BY, a function, a LIKE, a shape
//! the walker does not know — refuses the statement, naming the column.
//!
//! # Layout
//! - [`registry`]: registered tables and columns, and the pre-filter that lets
//!   statements naming no registered table skip the parser.
//! - this file: [`analyze`], its [`Analysis`] and [`Refusal`].
//! - `analyze`: the two walks over the syntax tree.
//! - [`rewrite`]: literal sites to encrypted bytea literals in the query text.
//!
//! Unqualified table names are resolved in schema `public` (the default
//! `search_path`); a session's `search_path` is not followed. So that this
//! never lets plaintext through, a statement naming a table without its
//! schema is refused when a registered table outside `public` has that name.

mod analyze;
pub mod copy;
pub mod registry;
pub mod rewrite;

use std::ops::Range;
use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use analyze::{LineOffsets, Walker};
pub use copy::{CopyDirection, CopyFormat, CopySpec};
pub use registry::{EncryptedColumn, Registry};

/// What a statement does to encrypted columns.
#[derive(Debug, Default, Clone)]
pub struct Analysis {
    /// Registered tables the statement names, as `schema.table`.
    pub tables: Vec<String>,
    /// Encrypted columns it references, each once.
    pub columns: Vec<Arc<EncryptedColumn>>,
    /// Encrypted columns whose stored values it reads, returns or filters,
    /// groups or joins on, each once: what a role denied a column may not
    /// run. A `*` reads every column it expands to.
    pub reads: Vec<Arc<EncryptedColumn>>,
    /// Encrypted columns it writes (INSERT, UPDATE SET, ON CONFLICT DO
    /// UPDATE SET, COPY FROM), each once.
    pub writes: Vec<Arc<EncryptedColumn>>,
    /// Literals to encrypt, by byte range in the statement text.
    pub literals: Vec<LiteralSite>,
    /// Parameters (`$n`, zero-based here) to encrypt at Bind.
    pub params: Vec<ParamSite>,
    /// A COPY whose rows hold encrypted columns.
    pub copy: Option<copy::CopySpec>,
}

impl Analysis {
    /// True when the statement needs nothing from the proxy.
    pub fn is_untouched(&self) -> bool {
        self.tables.is_empty()
    }
}

/// A literal bound for an encrypted column.
#[derive(Debug, Clone)]
pub struct LiteralSite {
    /// Bytes of the statement text to replace (the literal, with any cast).
    pub range: Range<usize>,
    /// The literal's value as text (quotes and escapes removed).
    pub value: String,
    pub column: Arc<EncryptedColumn>,
}

/// A parameter bound for an encrypted column.
#[derive(Debug, Clone)]
pub struct ParamSite {
    /// Zero-based parameter index (`$1` is 0).
    pub index: usize,
    pub column: Arc<EncryptedColumn>,
}

/// Why a statement is refused. Messages name columns and operations, never
/// values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 0A000: an operation encrypted data cannot support.
    #[error("column {column} is encrypted ({mode}); {reason}")]
    Unsupported { column: String, mode: &'static str, reason: String },
    /// 0A000: the proxy cannot tell what the statement does to encrypted data.
    #[error("{0}")]
    Unanalysable(String),
}

impl Refusal {
    pub fn sqlstate(&self) -> &'static str {
        "0A000"
    }
}

/// Analyses `sql` (one or more statements) against `registry`.
pub fn analyze(sql: &str, registry: &Registry) -> Result<Analysis, Refusal> {
    if !registry.may_touch(sql) {
        if !registry.is_empty() && unicode_escaped(sql) {
            // `U&"cust\006fmers"` names a registered table the pre-filter
            // cannot see. Results are still guarded by their RowDescription;
            // a write is refused, never passed through.
            return unicode_escaped_reads_only(sql);
        }
        return Ok(Analysis::default());
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|_| {
        Refusal::Unanalysable(
            "the statement names a table with encrypted columns, and pgwarden cannot parse \
             it, so it was not sent; simplify it or split it into plain statements"
                .into(),
        )
    })?;
    let offsets = LineOffsets::new(sql);
    let mut analysis = Analysis::default();
    for stmt in &statements {
        analyze::refuse_unqualified_shadowed(stmt, registry)?;
        Walker::new(registry, sql, &offsets, stmt, &mut analysis).run(stmt, registry)?;
    }
    if analysis.copy.is_some() && statements.len() > 1 {
        return Err(Refusal::Unanalysable(
            "send a COPY of encrypted columns as a statement of its own".into(),
        ));
    }
    Ok(analysis)
}

/// Whether `sql` may hold a Unicode-escaped identifier (`U&"..."`).
fn unicode_escaped(sql: &str) -> bool {
    sql.as_bytes()
        .windows(3)
        .any(|w| w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&' && w[2] == b'"')
}

/// A statement with a Unicode-escaped identifier passes only if it plainly
/// writes nothing: it starts with SELECT, WITH, VALUES or TABLE and has no
/// INSERT, UPDATE, DELETE, MERGE, COPY or INTO anywhere outside quotes. (The
/// parser does not read `U&"..."`; the tokenizer does.)
fn unicode_escaped_reads_only(sql: &str) -> Result<Analysis, Refusal> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let refusal = || {
        Refusal::Unanalysable(
            "a statement with a Unicode-escaped identifier (U&\"...\") may write to a table \
             with encrypted columns, which pgwarden cannot check; write the name plainly"
                .into(),
        )
    };
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().map_err(|_| refusal())?;
    let mut words = tokens.iter().filter_map(|t| match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    });
    let first = words.next();
    let reads = matches!(first.as_deref(), Some("SELECT" | "WITH" | "VALUES" | "TABLE"));
    let writes = |w: &str| matches!(w, "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "INTO");
    if reads && !words.any(|w| writes(&w)) {
        Ok(Analysis::default())
    } else {
        Err(refusal())
    }
}

#[cfg(test)]
mod tests;
