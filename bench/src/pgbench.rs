//! Running pgbench and reading its summary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::procs;

/// `pgbench -M`: how each statement travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One Query message per statement.
    Simple,
    /// Parse/Bind/Execute/Sync with an unnamed statement, every time.
    Extended,
    /// Parse once per connection, then Bind/Execute/Sync.
    Prepared,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Simple => "simple",
            Mode::Extended => "extended",
            Mode::Prepared => "prepared",
        }
    }
}

/// Where pgbench connects: 127.0.0.1, the same role and database for every
/// target, so authentication and data are the same and only the path differs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub port: u16,
    pub user: String,
    pub database: String,
}

/// What one pgbench run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Transactions per second, without initial connection time.
    pub tps: f64,
    /// Mean latency of a transaction, in milliseconds.
    pub latency_ms: f64,
    /// Transactions processed.
    pub transactions: u64,
    /// Failed transactions (pgbench 15+; 0 when not reported).
    pub failed: u64,
}

/// The pgbench binary: beside the server binaries (Debian), else on PATH.
pub fn binary(bindir: &Path) -> PathBuf {
    let beside = bindir.join("pgbench");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("pgbench")
    }
}

fn base(bin: &Path, at: &Endpoint) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &at.port.to_string(), "-U", &at.user])
        // No TLS on any path; the cluster has none, say so for all three.
        .env("PGSSLMODE", "disable")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    cmd
}

/// `pgbench -i -s scale`: creates and fills the tables.
pub fn init(bin: &Path, at: &Endpoint, scale: u32) -> Result<()> {
    procs::output(
        base(bin, at).args(["-i", "-q", "-s", &scale.to_string()]).arg(&at.database),
        "pgbench -i",
    )?;
    Ok(())
}

/// `pgbench -S -M mode -c clients -j min(clients, 2) -T seconds -n`.
pub fn select_only(
    bin: &Path,
    at: &Endpoint,
    mode: Mode,
    clients: u32,
    seconds: u32,
) -> Result<Sample> {
    select_only_with(bin, at, mode, clients, seconds, &Options::default())
}

/// What the suites other than pass-through change in a pgbench run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// libpq `sslmode` (`PGSSLMODE`); `disable` by default.
    pub sslmode: &'static str,
    /// `-C`: a new connection for every transaction.
    pub reconnect: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { sslmode: "disable", reconnect: false }
    }
}

/// [`select_only`] with `PGSSLMODE=<sslmode>` and, when `reconnect`, `-C`.
pub fn select_only_with(
    bin: &Path,
    at: &Endpoint,
    mode: Mode,
    clients: u32,
    seconds: u32,
    options: &Options,
) -> Result<Sample> {
    let threads = clients.clamp(1, 2);
    let mut cmd = base(bin, at);
    cmd.env("PGSSLMODE", options.sslmode);
    if options.reconnect {
        cmd.arg("-C");
    }
    let stdout = procs::output(
        cmd.args(["-S", "-n", "-M", mode.as_str()])
            .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &seconds.to_string()])
            .arg(&at.database),
        "pgbench",
    )?;
    let sample = parse(&stdout).with_context(|| format!("reading pgbench output:\n{stdout}"))?;
    if sample.failed > 0 {
        bail!("pgbench reported {} failed transactions", sample.failed);
    }
    Ok(sample)
}

/// Reads pgbench's summary. Understands the wording of pgbench 14+
/// (`tps = N (without initial connection time)`) and of older versions
/// (`tps = N (excluding connections establishing)`).
pub fn parse(out: &str) -> Result<Sample> {
    let mut tps = None;
    let mut latency_ms = None;
    let mut transactions = None;
    let mut failed = 0;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            // `including reconnection times`: pgbench 14+ with -C, where
            // connecting is what is measured.
            if rest.contains("without initial connection time")
                || rest.contains("excluding connections establishing")
                || rest.contains("including reconnection times")
            {
                tps = Some(first_number(rest).context("tps line")?);
            }
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            let ms = first_number(rest).context("latency line")?;
            latency_ms = Some(match rest.split_whitespace().nth(1) {
                Some("ms") | None => ms,
                Some("s") => ms * 1000.0,
                Some("us") => ms / 1000.0,
                Some(unit) => bail!("unknown latency unit {unit:?}"),
            });
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ")
        {
            transactions = Some(first_number(rest).context("transactions line")? as u64);
        } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            failed = first_number(rest).context("failed transactions line")? as u64;
        }
    }
    Ok(Sample {
        tps: tps.context("no `tps = ... (without initial connection time)` line")?,
        latency_ms: latency_ms.context("no `latency average = ...` line")?,
        transactions: transactions.unwrap_or(0),
        failed,
    })
}

/// The number a line starts with (`8123.45 (without ...)`, `0 (0.000%)`,
/// `123456/123456`).
fn first_number(s: &str) -> Result<f64> {
    let token: String = s.trim().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let n: f64 = token.parse().with_context(|| format!("not a number: {s:?}"))?;
    if !n.is_finite() {
        bail!("not a finite number: {s:?}");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 271828
number of failed transactions: 0 (0.000%)
latency average = 0.588 ms
initial connection time = 21.337 ms
tps = 27182.818284 (without initial connection time)
";

    const PGBENCH_13: &str = "\
transaction type: <builtin: select only>
number of transactions actually processed: 1000/1000
latency average = 1.250 ms
tps = 800.123456 (including connections establishing)
tps = 812.500000 (excluding connections establishing)
";

    #[test]
    fn reads_tps_latency_and_counts_of_pgbench_15() {
        let s = parse(PGBENCH_15).unwrap();
        assert_eq!(s.tps, 27182.818284);
        assert_eq!(s.latency_ms, 0.588);
        assert_eq!(s.transactions, 271828);
        assert_eq!(s.failed, 0);
    }

    #[test]
    fn takes_tps_excluding_connections_from_older_pgbench() {
        let s = parse(PGBENCH_13).unwrap();
        assert_eq!(s.tps, 812.5);
        assert_eq!(s.latency_ms, 1.25);
        assert_eq!(s.transactions, 1000);
    }

    #[test]
    fn reads_tps_of_a_reconnecting_run() {
        let out = PGBENCH_15
            .replace(
                "initial connection time = 21.337 ms\n",
                "average connection time = 1.234 ms\n",
            )
            .replace("(without initial connection time)", "(including reconnection times)");
        assert_eq!(parse(&out).unwrap().tps, 27182.818284);
    }

    #[test]
    fn counts_failed_transactions() {
        let out = PGBENCH_15
            .replace("failed transactions: 0 (0.000%)", "failed transactions: 12 (0.004%)");
        assert_eq!(parse(&out).unwrap().failed, 12);
    }

    #[test]
    fn output_without_a_summary_is_an_error() {
        let err = parse("pgbench: error: connection to server failed\n").unwrap_err();
        assert!(err.to_string().contains("tps"), "{err}");
        let no_latency = PGBENCH_15.replace("latency average = 0.588 ms\n", "");
        assert!(parse(&no_latency).is_err());
    }
}
