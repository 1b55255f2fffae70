//! What Postgres alone spends loading the suite's rows, with no proxy: the
//! copy-in operation again, on a direct connection. The rows pgwarden
//! stored (real envelopes) and the plaintext rows are read back by
//! `COPY ... TO STDOUT`, then loaded by `COPY ... FROM STDIN` the way the
//! copy-in operation sends them (CopyData of 64 KiB), into fresh tables:
//!
//! - plaintext rows, text format: the copy-in baseline without pgwarden;
//! - envelopes, text format (bytea as `\x` hex): what pgwarden sends Postgres;
//! - envelopes, binary format: what binary COPY toward Postgres would cost;
//!
//! the envelopes each with DESIGN.md's CHECK guards (as `keys init`
//! installs them) and without. pgwarden only adds work to the envelopes'
//! load, so encrypted copy-in through it cannot beat the envelopes' direct
//! rate: over the plaintext rate through pgwarden, that is a bound on the
//! copy-in ratio.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use tokio_postgres::{Client, NoTls};

use super::{copy_from_stdin, Table, DATABASE};
use crate::procs::Interrupt;
use crate::report::{js, median, num};

/// A load measured: which rows, into which table, in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Plaintext,
    EnvelopesText,
    EnvelopesBinary,
    EnvelopesTextUnguarded,
    EnvelopesBinaryUnguarded,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::Plaintext,
        Case::EnvelopesText,
        Case::EnvelopesBinary,
        Case::EnvelopesTextUnguarded,
        Case::EnvelopesBinaryUnguarded,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Case::Plaintext => "plaintext rows, text format (the baseline)",
            Case::EnvelopesText => "envelopes, text format, CHECK guards (what pgwarden sends)",
            Case::EnvelopesBinary => "envelopes, binary format, CHECK guards",
            Case::EnvelopesTextUnguarded => "envelopes, text format, no guards",
            Case::EnvelopesBinaryUnguarded => "envelopes, binary format, no guards",
        }
    }

    /// The table loaded, and the options of its COPY.
    fn load(self) -> (&'static str, &'static str) {
        match self {
            Case::Plaintext => ("ceiling_plaintext", ""),
            Case::EnvelopesText => ("ceiling_guarded", ""),
            Case::EnvelopesBinary => ("ceiling_guarded", " (FORMAT binary)"),
            Case::EnvelopesTextUnguarded => ("ceiling_bare", ""),
            Case::EnvelopesBinaryUnguarded => ("ceiling_bare", " (FORMAT binary)"),
        }
    }
}

/// Every round's seconds per case, indexed like [`Case::ALL`].
pub struct Ceiling {
    pub rows: u64,
    pub seconds: [Vec<f64>; 5],
}

impl Ceiling {
    pub fn rows_per_second(&self, c: Case) -> f64 {
        self.rows as f64 / median(self.seconds[c as usize].iter().copied())
    }

    /// Rows/s of `c` over rows/s of the plaintext baseline.
    pub fn ratio(&self, c: Case) -> f64 {
        self.rows_per_second(c) / self.rows_per_second(Case::Plaintext)
    }
}

/// Reads both tables back, then loads each case `rounds` times (which case
/// goes first turns with the round). Both tables must hold `rows` rows.
pub async fn measure(
    postgres_port: u16,
    rows: u64,
    rounds: u32,
    interrupt: &Interrupt,
) -> Result<Ceiling> {
    let url = format!(
        "host=127.0.0.1 port={postgres_port} user={} dbname={DATABASE} sslmode=disable",
        pgwarden::cluster::roles::TRUST
    );
    let (db, conn) =
        tokio_postgres::connect(&url, NoTls).await.context("connecting to Postgres directly")?;
    let conn = tokio::spawn(conn);
    for t in Table::ALL {
        let n: i64 = db.query_one(&format!("SELECT count(*) FROM {}", t.name()), &[]).await?.get(0);
        ensure!(n as u64 == rows, "table {} holds {n} rows, expected {rows}", t.name());
    }
    let plaintext = read(&db, "COPY plaintext (id, ssn, card) TO STDOUT").await?;
    let text = read(&db, "COPY encrypted (id, ssn, card) TO STDOUT").await?;
    let binary = read(&db, "COPY encrypted (id, ssn, card) TO STDOUT (FORMAT binary)").await?;
    db.batch_execute(
        "CREATE TABLE ceiling_plaintext (LIKE plaintext);
         CREATE TABLE ceiling_guarded (LIKE encrypted INCLUDING CONSTRAINTS);
         CREATE TABLE ceiling_bare (LIKE encrypted);",
    )
    .await?;
    let guards: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ceiling_guarded'::regclass \
             AND contype = 'c'",
            &[],
        )
        .await?
        .get(0);
    ensure!(guards == 2, "ceiling_guarded has {guards} CHECK constraints, expected 2");

    let mut seconds: [Vec<f64>; 5] = Default::default();
    for round in 0..rounds as usize {
        for k in 0..Case::ALL.len() {
            let case = Case::ALL[(round + k) % Case::ALL.len()];
            let data = match case {
                Case::Plaintext => &plaintext,
                Case::EnvelopesText | Case::EnvelopesTextUnguarded => &text,
                Case::EnvelopesBinary | Case::EnvelopesBinaryUnguarded => &binary,
            };
            let s = load(&db, case, data, rows).await?;
            eprintln!("[ceiling {}/{rounds}] {:<58} {s:.3} s", round + 1, case.describe());
            seconds[case as usize].push(s);
            interrupt.check()?;
        }
    }
    db.batch_execute("DROP TABLE ceiling_plaintext, ceiling_guarded, ceiling_bare").await?;
    drop(db);
    let _ = conn.await;
    Ok(Ceiling { rows, seconds })
}

/// Everything a COPY TO STDOUT sends.
async fn read(db: &Client, sql: &str) -> Result<Bytes> {
    let stream = db.copy_out(sql).await.with_context(|| format!("{sql:.60}"))?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in &chunks {
        all.extend_from_slice(c);
    }
    Ok(all.freeze())
}

/// Empties the case's table, loads `data` into it, checks the count: the
/// load's seconds.
async fn load(db: &Client, case: Case, data: &Bytes, rows: u64) -> Result<f64> {
    let (table, options) = case.load();
    db.batch_execute(&format!("TRUNCATE {table}")).await?;
    let sql = format!("COPY {table} (id, ssn, card) FROM STDIN{options}");
    let start = Instant::now();
    let n = copy_from_stdin(db, &sql, data).await.with_context(|| format!("loading {table}"))?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(n == rows, "loading {table}: {n} rows, expected {rows}");
    db.batch_execute(&format!("TRUNCATE {table}")).await?;
    Ok(seconds)
}

/// The most the copy-in ratio can be: the envelopes' direct rate (text
/// format, guards, what pgwarden sends) over the plaintext copy-in rate
/// through pgwarden.
pub fn bound(c: &Ceiling, plaintext_through_pgwarden: f64) -> f64 {
    c.rows_per_second(Case::EnvelopesText) / plaintext_through_pgwarden
}

pub fn markdown(c: &Ceiling) -> String {
    let mut out = String::from(
        "| Postgres alone, COPY FROM STDIN on a direct connection | rows/s | / plaintext |\n|---|---:|---:|\n",
    );
    for case in Case::ALL {
        out.push_str(&format!(
            "| {} | {:.0} | {:.3} |\n",
            case.describe(),
            c.rows_per_second(case),
            c.ratio(case)
        ));
    }
    out
}

pub fn to_json(c: &Ceiling) -> String {
    let cases: Vec<String> = Case::ALL
        .iter()
        .map(|&case| {
            let rounds: Vec<String> = c.seconds[case as usize].iter().map(|&s| num(s)).collect();
            format!(
                "{{\"case\": {}, \"rows_per_second\": {}, \"ratio\": {}, \"rounds_seconds\": [{}]}}",
                js(case.describe()),
                num(c.rows_per_second(case)),
                num(c.ratio(case)),
                rounds.join(", ")
            )
        })
        .collect();
    format!(
        "{{\"benchmark\": \"encryption-ceiling\", \"description\": {}, \"rows\": {}, \"cases\": [\n  {}\n]}}\n",
        js("COPY FROM STDIN (64 KiB CopyData) on a direct connection, no proxy: what Postgres alone spends loading the suite's plaintext rows and pgwarden's envelopes; median of the rounds"),
        c.rows,
        cases.join(",\n  ")
    )
}
