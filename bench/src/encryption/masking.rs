//! Masked vs full reads (issue 4): the same `SELECT id, ssn, card FROM
//! encrypted` through pgwarden as a role with full access and as one whose
//! policy masks both columns (`partial(0, '***-**-', 4)` and `last4`), in
//! both protocols, alternating which role goes first; median rows/s.

use std::pin::pin;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use futures_util::TryStreamExt;
use pgwarden::cluster::{roles, PASSWORD};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::DATABASE;
use crate::procs::Interrupt;

/// The login role whose policy masks both columns.
pub const MASKED_ROLE: &str = "bench_masked";

/// The access rules of the suite's configuration: the benchmark's own roles
/// see everything, [`MASKED_ROLE`] sees masks.
pub const POLICIES: &str = r#"
[[policies]]
roles = ["pgw_trust", "pgw_scram"]
columns = ["*"]
access = "full"

[[policies]]
roles = ["bench_masked"]
columns = ["public.encrypted.ssn"]
access = "masked"
mask = "partial(0, '***-**-', 4)"

[[policies]]
roles = ["bench_masked"]
columns = ["public.encrypted.card"]
access = "masked"
mask = "last4"
"#;

/// Creates [`MASKED_ROLE`] in Postgres (SCRAM, like any application login).
pub const ROLE_SQL: &str = "CREATE ROLE bench_masked LOGIN PASSWORD '{pw}'; \
                            GRANT SELECT ON encrypted TO bench_masked;";

pub fn role_sql() -> String {
    ROLE_SQL.replace("{pw}", PASSWORD)
}

/// Median rows/s of one read as full and as masked, and their ratio.
pub struct Masking {
    pub what: &'static str,
    pub full: f64,
    pub masked: f64,
}

impl Masking {
    pub fn ratio(&self) -> f64 {
        self.masked / self.full
    }
}

/// Target (issue 4): masked ≥ 0.9 × full.
pub const TARGET: f64 = 0.9;

pub async fn measure(
    port: u16,
    rows: u64,
    rounds: u32,
    interrupt: &Interrupt,
) -> Result<Vec<Masking>> {
    let connect = |user: &'static str| async move {
        let url = format!(
            "host=127.0.0.1 port={port} user={user} password={PASSWORD} dbname={DATABASE} \
             sslmode=disable application_name=pgwarden-bench"
        );
        let (client, conn) = tokio_postgres::connect(&url, NoTls)
            .await
            .with_context(|| format!("connecting through pgwarden as {user}"))?;
        tokio::spawn(conn);
        anyhow::Ok(client)
    };
    let roles = [roles::TRUST, MASKED_ROLE];
    let clients = [connect(roles[0]).await?, connect(roles[1]).await?];
    // The masked role really sees masks, the full one plaintext.
    let probe = "SELECT ssn, card FROM encrypted WHERE id = 1";
    let masked = clients[1].query_one(probe, &[]).await?;
    ensure!(
        masked.get::<_, &str>(0).starts_with("***-**-")
            && masked.get::<_, &str>(1).starts_with("************"),
        "the masked role does not see masks"
    );
    let full = clients[0].query_one(probe, &[]).await?;
    ensure!(!full.get::<_, &str>(0).starts_with('*'), "the full role sees masks");

    let mut samples: [[Vec<f64>; 2]; 2] = Default::default();
    for round in 0..rounds as usize {
        for (what, by_role) in samples.iter_mut().enumerate() {
            for k in 0..2 {
                let who = (round + what + k) % 2;
                // A new connection for every read: one kept for a role keeps
                // whatever it happens to cost (measured: 12% between two
                // roles with the same full access, each on its own kept
                // connection).
                let client = &connect(roles[who]).await?;
                let start = Instant::now();
                let n = if what == 0 { extended(client).await? } else { simple(client).await? };
                ensure!(n == rows, "read {n} rows, expected {rows}");
                let rate = n as f64 / start.elapsed().as_secs_f64();
                eprintln!(
                    "masking: {:<16} {:<6} {rate:>9.0} rows/s",
                    ["select-extended", "select-simple"][what],
                    ["full", "masked"][who]
                );
                by_role[who].push(rate);
                interrupt.check()?;
            }
        }
    }
    Ok(samples
        .into_iter()
        .zip(["SELECT, prepared (binary results)", "SELECT, simple query (text results)"])
        .map(|([full, masked], what)| Masking { what, full: median(full), masked: median(masked) })
        .collect())
}

async fn extended(client: &Client) -> Result<u64> {
    let rows =
        client.query_raw("SELECT id, ssn, card FROM encrypted", Vec::<String>::new()).await?;
    let mut rows = pin!(rows);
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        std::hint::black_box((row.get::<_, i64>(0), row.get::<_, &str>(1), row.get::<_, &str>(2)));
        n += 1;
    }
    Ok(n)
}

async fn simple(client: &Client) -> Result<u64> {
    let messages = client.simple_query("SELECT id, ssn, card FROM encrypted").await?;
    Ok(messages.iter().filter(|m| matches!(m, SimpleQueryMessage::Row(_))).count() as u64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The markdown table for bench/README.md.
pub fn markdown(results: &[Masking]) -> String {
    let mut out = String::from(
        "| read (200,000 rows unless --rows) | full rows/s | masked rows/s | masked / full |\n\
         |---|---:|---:|---:|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.3} |\n",
            r.what,
            r.full,
            r.masked,
            r.ratio()
        ));
    }
    out
}

/// Medians and ratios as JSON.
pub fn to_json(results: &[Masking]) -> String {
    let rows: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{{\"read\":\"{}\",\"full_rows_per_s\":{:.1},\"masked_rows_per_s\":{:.1},\"ratio\":{:.4}}}",
                r.what,
                r.full,
                r.masked,
                r.ratio()
            )
        })
        .collect();
    format!("{{\"target\":{TARGET},\"masking\":[{}]}}\n", rows.join(","))
}
