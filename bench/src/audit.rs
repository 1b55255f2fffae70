//! `pgwarden-bench audit`: what the audit log costs.
//!
//! `pgbench -S -M prepared -c 16` through pgwarden with the audit log off,
//! with `[audit] sinks = ["file"]` and with `sinks = ["postgres"]` (the
//! proxy's own connection as `upstream.admin_user`, into the same Postgres).
//! Every measured run gets a fresh pgwarden and a fresh log: after the run
//! pgwarden is stopped with SIGTERM (which seals the log), the statement
//! records are counted against pgbench's transactions (warm-up included), and
//! `pgwarden audit verify` must pass on the files, or on the table's lines
//! (`SELECT line FROM pgwarden.audit_log ORDER BY seq`). A miss fails the run.
//! The log is then removed. The order of the three rotates between rounds.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgwarden::cluster::{roles, Cluster};

use crate::pgbench::{Endpoint, Mode, Options};
use crate::procs::{self, Interrupt, ScratchDir};
use crate::report::{self, Measurement};
use crate::runner;
use crate::tls::{self, Load, Settings};
use crate::warden::{self, Extra, Pgwarden};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Off,
    File,
    Postgres,
}

const SINKS: [Sink; 3] = [Sink::Off, Sink::File, Sink::Postgres];

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Sink::Off => "off",
            Sink::File => "file",
            Sink::Postgres => "postgres",
        }
    }
}

/// The SIGTERM-to-exit allowance: pgwarden waits up to 30 s for its sinks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(40);

/// One measured run and what its log held.
struct Audited {
    m: Measurement,
    /// pgbench transactions, warm-up and measured run.
    transactions: u64,
    /// Statement records in the log (`None` with the audit log off).
    records: Option<u64>,
}

pub fn run(settings: &Settings) -> Result<()> {
    let interrupt = Interrupt::install();
    let (started, stamp) = report::utc_now();
    let warden_bin = match &settings.pgwarden_bin {
        Some(bin) => bin.clone(),
        None => warden::build_release()?,
    };
    interrupt.check()?;
    let (cluster, pgbench_bin, direct) = runner::start_postgres(settings.scale)?;
    interrupt.check()?;
    let scratch = ScratchDir::create(None)?;
    let key = scratch.write("audit.key", &random_key()?, None)?;
    let ticks = procs::clock_ticks();
    let loadavg_start = runner::read_trimmed("/proc/loadavg");

    let mut results: [Vec<Audited>; 3] = Default::default();
    let total = SINKS.len() * settings.rounds as usize;
    let mut done = 0;
    for round in 0..settings.rounds as usize {
        for k in 0..SINKS.len() {
            let sink = SINKS[(round + k) % SINKS.len()];
            let one = One {
                sink,
                settings,
                warden_bin: &warden_bin,
                pgbench_bin: &pgbench_bin,
                cluster: &cluster,
                direct: &direct,
                scratch: &scratch,
                key: &key,
                ticks,
                run: done,
            };
            let a = one.run(&interrupt)?;
            done += 1;
            eprintln!(
                "[{done:>2}/{total}] audit {:<8} c={} {:>9.0} tps  {:.3} ms  {}",
                sink.name(),
                settings.clients,
                a.m.sample.tps,
                a.m.sample.latency_ms,
                a.records.map_or_else(String::new, |r| format!(
                    "{r} statement records for {} transactions; verified",
                    a.transactions
                ))
            );
            results[sink as usize].push(a);
        }
    }
    let loadavg_end = runner::read_trimmed("/proc/loadavg");

    println!();
    println!(
        "pgbench -S -M prepared -c {} -j {}, plaintext, through pgwarden with the audit log off / file sink / postgres sink; scale {}, {} s per run after {} s warm-up, median of {} round(s)",
        settings.clients,
        settings.clients.clamp(1, 2),
        settings.scale,
        settings.seconds,
        settings.warmup_seconds,
        settings.rounds
    );
    println!("load average before the first run: {loadavg_start}; at end: {loadavg_end}");
    println!();
    print!("{}", markdown_table(settings, &results));
    println!();
    println!("{}", verdict(&results));
    let json = json(settings, &results, &started, &loadavg_start, &loadavg_end, &warden_bin);
    let path = tls::write_json(&settings.out_dir, &format!("audit-{stamp}.json"), &json)?;
    println!();
    println!("wrote {}", path.display());
    Ok(())
}

/// One measured run with one sink.
struct One<'a> {
    sink: Sink,
    settings: &'a Settings,
    warden_bin: &'a Path,
    pgbench_bin: &'a Path,
    cluster: &'a Cluster,
    direct: &'a Endpoint,
    scratch: &'a ScratchDir,
    key: &'a Path,
    ticks: f64,
    /// Its number, for file names.
    run: usize,
}

impl One<'_> {
    fn run(&self, interrupt: &Interrupt) -> Result<Audited> {
        self.settle()?;
        let dir = self.scratch.path().join(format!("audit-{}", self.run));
        let file = dir.join("pgwarden-audit.jsonl");
        let mut extra = Extra { name: "pgwarden-audit", ..Extra::default() };
        let audit = |sinks: &str| {
            format!(
                "\n[audit]\nsinks = [{sinks}]\nfile = {}\nkey = {}\n",
                report::js(&file.display().to_string()),
                report::js(&format!("file:{}", self.key.display()))
            )
        };
        match self.sink {
            Sink::Off => {}
            Sink::File => {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                extra.sections = audit("\"file\"");
            }
            Sink::Postgres => {
                // A fresh table, so the chain starts here and the count is this run's.
                self.cluster
                    .psql("postgres", "DROP SCHEMA IF EXISTS pgwarden CASCADE")
                    .context("dropping the previous audit table")?;
                extra.upstream = format!(
                    "admin_user = {}\nadmin_database = \"postgres\"\n",
                    report::js(roles::TRUST)
                );
                extra.sections = audit("\"postgres\"");
            }
        }
        let pgwarden = Pgwarden::start_extra(
            self.warden_bin,
            self.scratch,
            self.direct.port,
            self.settings.pgwarden_workers,
            &extra,
        )?;
        let load = Load {
            pgbench: self.pgbench_bin,
            at: Endpoint { port: pgwarden.port, ..self.direct.clone() },
            mode: Mode::Prepared,
            clients: self.settings.clients,
            options: Options::default(),
            pid: Some(pgwarden.pid()),
            ticks: self.ticks,
            what: format!("through pgwarden, audit {}", self.sink.name()),
        };
        let (m, warmup) =
            load.measure(self.settings.seconds, self.settings.warmup_seconds, interrupt)?;
        // SIGTERM seals the log and waits until the sink holds every record.
        pgwarden.shut_down(SHUTDOWN_GRACE)?;
        let transactions = m.sample.transactions + warmup.map_or(0, |w| w.transactions);
        let records = match self.sink {
            Sink::Off => None,
            Sink::File => {
                let files = files_in(&dir)?;
                let records = count_statements(&files)?;
                check(records, transactions, self.sink)?;
                verify(self.warden_bin, self.key, &files)?;
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                Some(records)
            }
            Sink::Postgres => {
                let records: u64 = self
                    .cluster
                    .psql(
                        "postgres",
                        "SELECT count(*) FROM pgwarden.audit_log WHERE event = 'statement'",
                    )
                    .context("counting the audit table's statement records")?
                    .trim()
                    .parse()
                    .context("reading the audit table's count")?;
                check(records, transactions, self.sink)?;
                let lines = self.scratch.path().join(format!("audit-{}.lines", self.run));
                self.dump_table(&lines)?;
                verify(self.warden_bin, self.key, std::slice::from_ref(&lines))?;
                std::fs::remove_file(&lines)
                    .with_context(|| format!("removing {}", lines.display()))?;
                self.cluster
                    .psql("postgres", "DROP SCHEMA pgwarden CASCADE")
                    .context("dropping the audit table")?;
                Some(records)
            }
        };
        Ok(Audited { m, transactions, records })
    }

    /// Lets the previous run's clean-up finish before this run is measured:
    /// Postgres writes what the postgres sink's table and its drop left dirty
    /// (`CHECKPOINT`), the kernel what a file sink's log left (`sync`), so
    /// neither lands in the next run, whatever its sink.
    fn settle(&self) -> Result<()> {
        self.cluster.psql("postgres", "CHECKPOINT").context("CHECKPOINT before a run")?;
        procs::output(&mut Command::new("sync"), "sync")?;
        Ok(())
    }

    /// `psql -Atc "SELECT line FROM pgwarden.audit_log ORDER BY seq" -o FILE`.
    fn dump_table(&self, out: &Path) -> Result<()> {
        procs::output(
            Command::new(self.cluster.bindir().join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-p", &self.direct.port.to_string()])
                .args(["-U", roles::TRUST, "-d", "postgres"])
                .args(["-c", "SELECT line FROM pgwarden.audit_log ORDER BY seq"])
                .arg("-o")
                .arg(out)
                .env("PGSSLMODE", "disable"),
            "psql (dumping pgwarden.audit_log)",
        )?;
        Ok(())
    }
}

/// 32 random bytes from /dev/urandom, as 64 hex digits (the key is the
/// file's text).
fn random_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Every file in `dir` (the current file and those rotated from it).
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        files.push(entry?.path());
    }
    files.sort();
    if files.is_empty() {
        bail!("the file sink wrote nothing into {}", dir.display());
    }
    Ok(files)
}

/// Lines holding `"event":"statement"` in `files`.
fn count_statements(files: &[PathBuf]) -> Result<u64> {
    let mut n = 0;
    for f in files {
        let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        n += text
            .split(|&b| b == b'\n')
            .filter(|line| line.windows(19).any(|w| w == b"\"event\":\"statement\""))
            .count() as u64;
    }
    Ok(n)
}

/// Each transaction of `pgbench -S -M prepared` is one Execute, so one
/// statement record; a few more are pgbench's own queries and transactions
/// cut off at the end of `-T`. Fewer records than transactions, or many more,
/// is a failure.
fn check(records: u64, transactions: u64, sink: Sink) -> Result<()> {
    let slack = transactions / 200 + 100;
    if records < transactions || records > transactions + slack {
        bail!(
            "the {} sink holds {records} statement records for {transactions} pgbench \
             transactions (expected {transactions} to {})",
            sink.name(),
            transactions + slack
        );
    }
    Ok(())
}

/// `pgwarden audit verify FILE... --key file:KEY`; its output on failure.
fn verify(bin: &Path, key: &Path, files: &[PathBuf]) -> Result<()> {
    procs::output(
        Command::new(bin)
            .args(["audit", "verify"])
            .args(files)
            .arg("--key")
            .arg(format!("file:{}", key.display())),
        "pgwarden audit verify",
    )?;
    Ok(())
}

fn tps(r: &[Audited]) -> f64 {
    report::median(r.iter().map(|a| a.m.sample.tps))
}

fn latency(r: &[Audited]) -> f64 {
    report::median(r.iter().map(|a| a.m.sample.latency_ms))
}

fn cpu_us(r: &[Audited]) -> f64 {
    report::median(r.iter().filter_map(|a| {
        let txn = a.m.sample.transactions;
        a.m.proxy_cpu_s.filter(|_| txn > 0).map(|s| s * 1e6 / txn as f64)
    }))
}

fn ratio(results: &[Vec<Audited>; 3], sink: Sink) -> f64 {
    let off = tps(&results[Sink::Off as usize]);
    if off > 0.0 {
        tps(&results[sink as usize]) / off
    } else {
        f64::NAN
    }
}

fn markdown_table(settings: &Settings, results: &[Vec<Audited>; 3]) -> String {
    let mut out = String::from(
        "| audit | clients | TPS (ms) | / audit off | pgwarden CPU µs/txn | statement records / transactions |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for sink in SINKS {
        let r = &results[sink as usize];
        let records: u64 = r.iter().filter_map(|a| a.records).sum();
        let transactions: u64 = r.iter().map(|a| a.transactions).sum();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} ({:.3}) | {:.3} | {:.1} | {} |",
            match sink {
                Sink::Off => "off",
                Sink::File => "`sinks = [\"file\"]`",
                Sink::Postgres => "`sinks = [\"postgres\"]`",
            },
            settings.clients,
            tps(r),
            latency(r),
            ratio(results, sink),
            cpu_us(r),
            if sink == Sink::Off { "-".to_string() } else { format!("{records} / {transactions}") }
        );
    }
    out
}

fn verdict(results: &[Vec<Audited>; 3]) -> String {
    let file = ratio(results, Sink::File);
    let postgres = ratio(results, Sink::Postgres);
    let met = if file >= 0.95 { "target met" } else { "target missed" };
    format!(
        "{met}: file sink {file:.3}x of audit off (target >= 0.95); postgres sink {postgres:.3}x; every audited log verified"
    )
}

fn json(
    settings: &Settings,
    results: &[Vec<Audited>; 3],
    started: &str,
    loadavg_start: &str,
    loadavg_end: &str,
    warden_bin: &Path,
) -> String {
    let mut out = report::json_header(
        "audit",
        "pgbench -S -M prepared through pgwarden with the audit log off, to the file sink and to the postgres sink (same Postgres); a fresh pgwarden and log per run, statement records counted and the log verified after each; median over rounds",
        started,
        loadavg_start,
        loadavg_end,
    );
    let _ = writeln!(out, "  \"pgwarden\": {},", report::js(&warden::version(warden_bin)));
    let _ = writeln!(out, "  \"settings\": {},", settings.json());
    out.push_str("  \"results\": [\n");
    for (i, sink) in SINKS.into_iter().enumerate() {
        let r = &results[sink as usize];
        let list = |f: &dyn Fn(&Audited) -> String| r.iter().map(f).collect::<Vec<_>>().join(", ");
        let _ = write!(
            out,
            "    {{\"audit\": {}, \"tps\": {}, \"over_off\": {}, \"cpu_us_per_txn\": {}, \"rounds_tps\": [{}], \"rounds_transactions\": [{}], \"rounds_statement_records\": [{}]}}",
            report::js(sink.name()),
            report::num(tps(r)),
            report::num(ratio(results, sink)),
            report::num(cpu_us(r)),
            list(&|a| report::num(a.m.sample.tps)),
            list(&|a| a.transactions.to_string()),
            list(&|a| a.records.map_or_else(|| "null".into(), |n| n.to_string())),
        );
        out.push_str(if i + 1 < SINKS.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_must_cover_every_transaction_and_not_many_more() {
        assert!(check(1000, 1000, Sink::File).is_ok());
        assert!(check(1105, 1000, Sink::File).is_ok());
        assert!(check(999, 1000, Sink::File).is_err());
        assert!(check(1106, 1000, Sink::Postgres).is_err());
    }
}
