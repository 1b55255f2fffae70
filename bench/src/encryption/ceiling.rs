//! What Postgres alone spends loading the suite's rows, with no proxy: the
//! ceiling of the copy-in ratio. The rows pgwarden stored (real envelopes)
//! and the plaintext rows are written to files in the data directory by
//! `COPY ... TO`, then loaded again by a server-side `COPY ... FROM` file on
//! a direct connection, into fresh tables:
//!
//! - plaintext rows, text format: the copy-in baseline;
//! - envelopes, text format (bytea as `\x` hex): what pgwarden sends Postgres;
//! - envelopes, binary format: what binary COPY toward Postgres would cost;
//!
//! the envelopes each with DESIGN.md's CHECK guards (as `keys init`
//! installs them) and without. Times are Postgres' alone: no client parses
//! or sends anything.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use tokio_postgres::{Client, NoTls};

use super::{Table, DATABASE};
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

    /// The table loaded and the file and options it is loaded from.
    fn load(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Case::Plaintext => ("ceiling_plaintext", PLAIN_FILE, ""),
            Case::EnvelopesText => ("ceiling_guarded", TEXT_FILE, ""),
            Case::EnvelopesBinary => ("ceiling_guarded", BINARY_FILE, " (FORMAT binary)"),
            Case::EnvelopesTextUnguarded => ("ceiling_bare", TEXT_FILE, ""),
            Case::EnvelopesBinaryUnguarded => ("ceiling_bare", BINARY_FILE, " (FORMAT binary)"),
        }
    }
}

// In the data directory, which goes with the throwaway cluster.
const PLAIN_FILE: &str = "pgwarden-ceiling-plaintext.txt";
const TEXT_FILE: &str = "pgwarden-ceiling-envelopes.txt";
const BINARY_FILE: &str = "pgwarden-ceiling-envelopes.bin";

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

/// Exports both tables into `data_dir` (the cluster's, an absolute path),
/// then loads each case `rounds` times (which case goes first turns with
/// the round). Both tables must hold `rows` rows.
pub async fn measure(
    postgres_port: u16,
    data_dir: &Path,
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
    let dir = data_dir.to_str().context("the data directory's path is not UTF-8")?;
    ensure!(data_dir.is_absolute() && !dir.contains('\''), "unusable data directory {dir}");
    db.batch_execute(&format!(
        "COPY plaintext (id, ssn, card) TO '{dir}/{PLAIN_FILE}';
         COPY encrypted (id, ssn, card) TO '{dir}/{TEXT_FILE}';
         COPY encrypted (id, ssn, card) TO '{dir}/{BINARY_FILE}' (FORMAT binary);
         CREATE TABLE ceiling_plaintext (LIKE plaintext);
         CREATE TABLE ceiling_guarded (LIKE encrypted INCLUDING CONSTRAINTS);
         CREATE TABLE ceiling_bare (LIKE encrypted);"
    ))
    .await
    .context("exporting the rows")?;
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
            let s = load(&db, dir, case, rows).await?;
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

/// Empties the case's table, loads it, checks the count: the load's seconds.
async fn load(db: &Client, dir: &str, case: Case, rows: u64) -> Result<f64> {
    let (table, file, options) = case.load();
    db.batch_execute(&format!("TRUNCATE {table}")).await?;
    let start = Instant::now();
    let n = db
        .execute(&format!("COPY {table} (id, ssn, card) FROM '{dir}/{file}'{options}"), &[])
        .await
        .with_context(|| format!("loading {table} from {file}"))?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(n == rows, "loading {table} from {file}: {n} rows, expected {rows}");
    db.batch_execute(&format!("TRUNCATE {table}")).await?;
    Ok(seconds)
}

pub fn markdown(c: &Ceiling) -> String {
    let mut out = String::from(
        "| Postgres alone, COPY FROM a file | rows/s | / plaintext |\n|---|---:|---:|\n",
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
        js("server-side COPY FROM a file on a direct connection, no proxy: what Postgres alone spends loading the suite's plaintext rows and pgwarden's envelopes; median of the rounds"),
        c.rows,
        cases.join(",\n  ")
    )
}
