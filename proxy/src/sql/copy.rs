//! COPY of encrypted columns: how the rows are written (text or csv, and
//! their options) and which fields are encrypted. COPY FROM STDIN names the
//! encrypted column of each field; COPY TO STDOUT names a query with the same
//! result columns, whose RowDescription tells which fields to decrypt.

use std::collections::HashMap;
use std::sync::Arc;

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopyTarget, Ident, ObjectName,
};

use super::analyze::normal;
use super::{EncryptedColumn, Refusal};

/// The row format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
}

/// What the proxy must know to rewrite the rows of one COPY.
#[derive(Debug, Clone)]
pub struct CopySpec {
    pub format: CopyFormat,
    pub delimiter: u8,
    /// The text that stands for NULL (`\N` in text, empty in csv).
    pub null: Vec<u8>,
    pub quote: u8,
    pub escape: u8,
    /// The first line is a header, not a row.
    pub header: bool,
    pub direction: CopyDirection,
}

#[derive(Debug, Clone)]
pub enum CopyDirection {
    /// FROM STDIN: the encrypted column of each field, in order.
    In(Vec<Option<Arc<EncryptedColumn>>>),
    /// TO STDOUT: a query whose result columns are the rows' fields.
    Out(String),
}

/// The options of a COPY, with the format's defaults.
pub(super) fn spec(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
    direction: CopyDirection,
) -> Result<CopySpec, Refusal> {
    let mut format = CopyFormat::Text;
    let mut delimiter = None;
    let mut null = None;
    let mut quote = None;
    let mut escape = None;
    let mut header = false;
    let byte = |c: char| -> Result<u8, Refusal> {
        u8::try_from(c).ok().filter(u8::is_ascii).ok_or_else(|| {
            Refusal::Unanalysable("COPY options of encrypted columns must be ASCII".into())
        })
    };
    for o in options {
        match o {
            CopyOption::Format(f) => {
                format = match normal(f).as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    _ => return Err(binary()),
                }
            }
            CopyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
            CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(byte(*c)?),
            CopyOption::Escape(c) => escape = Some(byte(*c)?),
            CopyOption::Freeze(_) => {}
            CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") => {}
            other => return Err(unsupported_option(other)),
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => return Err(binary()),
            CopyLegacyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
            CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyLegacyOption::Csv(csv) => {
                format = CopyFormat::Csv;
                for o in csv {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = Some(byte(*c)?),
                        CopyLegacyCsvOption::Escape(c) => escape = Some(byte(*c)?),
                        other => return Err(unsupported_option(other)),
                    }
                }
            }
            CopyLegacyOption::Header => header = true,
            other => return Err(unsupported_option(other)),
        }
    }
    let csv = format == CopyFormat::Csv;
    let quote = quote.unwrap_or(b'"');
    Ok(CopySpec {
        format,
        delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
        null: null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() }),
        quote,
        escape: escape.unwrap_or(quote),
        header,
        direction,
    })
}

/// COPY `table` FROM STDIN or TO STDOUT, for a table with encrypted columns.
pub(super) fn table(
    table: &ObjectName,
    encrypted: &HashMap<String, Arc<EncryptedColumn>>,
    columns: &[Ident],
    to: bool,
    target: &CopyTarget,
) -> Result<CopyDirection, Refusal> {
    match (to, target) {
        (false, CopyTarget::Stdin) => {
            if columns.is_empty() {
                return Err(Refusal::Unanalysable(
                    "COPY into a table with encrypted columns must name its columns \
                     (COPY t (a, b) FROM STDIN)"
                        .into(),
                ));
            }
            Ok(CopyDirection::In(
                columns.iter().map(|c| encrypted.get(&normal(c)).cloned()).collect(),
            ))
        }
        (true, CopyTarget::Stdout) => {
            let list = if columns.is_empty() {
                "*".to_string()
            } else {
                columns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            };
            Ok(CopyDirection::Out(format!("SELECT {list} FROM {table}")))
        }
        _ => Err(server_side()),
    }
}

pub(super) fn server_side() -> Refusal {
    Refusal::Unanalysable(
        "COPY of encrypted columns must go through the client (FROM STDIN or TO STDOUT; \
         psql's \\copy): the server cannot encrypt or decrypt them"
            .into(),
    )
}

fn binary() -> Refusal {
    Refusal::Unanalysable(
        "COPY of encrypted columns supports the text and csv formats, not binary".into(),
    )
}

fn unsupported_option(o: &impl std::fmt::Display) -> Refusal {
    Refusal::Unanalysable(format!("COPY option {o} is not supported with encrypted columns"))
}
