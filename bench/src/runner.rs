//! One whole run: set everything up, run pgbench through each target, report,
//! tear down.
//!
//! Teardown is by drop order: locals drop in reverse, so pgwarden and
//! PgBouncer stop first, then their scratch directory goes, then Postgres.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use pgwarden::cluster::{roles, Cluster};

use crate::bouncer::{self, PgBouncer};
use crate::pgbench::{self, Endpoint, Mode};
use crate::procs::{self, Interrupt, ScratchDir};
use crate::report::{self, Measurement, Meta, Row, Target};
use crate::warden::{self, Pgwarden};

/// The database pgbench fills and reads.
const DATABASE: &str = "bench";

/// What to run; from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scale: u32,
    pub seconds: u32,
    pub warmup_seconds: u32,
    pub rounds: u32,
    pub modes: Vec<Mode>,
    pub clients: Vec<u32>,
    /// A pgwarden binary to use instead of building target/release/pgwarden.
    pub pgwarden_bin: Option<PathBuf>,
    /// Where the JSON and SVG go.
    pub out_dir: PathBuf,
    /// pgwarden's `listen.worker_threads`.
    pub pgwarden_workers: u16,
}

pub fn run(settings: &Settings) -> Result<()> {
    let interrupt = Interrupt::install();
    let (started, stamp) = report::utc_now();

    let warden_bin = match &settings.pgwarden_bin {
        Some(bin) => bin.clone(),
        None => warden::build_release()?,
    };
    let bouncer_bin = bouncer::ensure_installed()?;
    interrupt.check()?;

    let (cluster, pgbench_bin, direct) = start_postgres(settings.scale)?;
    interrupt.check()?;

    let owner = if procs::running_as_root()? {
        Some(procs::os_user("postgres").context("PgBouncer refuses to run as root")?)
    } else {
        None
    };
    let scratch = ScratchDir::create(owner)?;
    let pgbouncer = PgBouncer::start(&bouncer_bin, &scratch, owner, &direct)?;
    let pgwarden = Pgwarden::start(&warden_bin, &scratch, direct.port, settings.pgwarden_workers)?;
    eprintln!(
        "postgres on 127.0.0.1:{} (log {}), pgbouncer on :{} (pid {}), pgwarden on :{} (pid {})",
        direct.port,
        cluster.log_path().display(),
        pgbouncer.port,
        pgbouncer.pid(),
        pgwarden.port,
        pgwarden.pid()
    );
    let endpoint = |t: Target| Endpoint {
        port: match t {
            Target::Direct => direct.port,
            Target::PgBouncer => pgbouncer.port,
            Target::Pgwarden => pgwarden.port,
        },
        ..direct.clone()
    };

    let ticks = procs::clock_ticks();
    let loadavg_start = read_trimmed("/proc/loadavg");
    let mut rows: Vec<Row> = settings
        .modes
        .iter()
        .flat_map(|&m| settings.clients.iter().map(move |&c| Row::new(m, c, c.clamp(1, 2))))
        .collect();
    let total = rows.len() * Target::ALL.len() * settings.rounds as usize;
    let mut done = 0;
    for round in 0..settings.rounds as usize {
        for (i, row) in rows.iter_mut().enumerate() {
            // The three targets back to back, first one rotating, so slow drift
            // of the machine (caches, thermal, neighbours) is shared out.
            for k in 0..Target::ALL.len() {
                let target = Target::ALL[(i + round + k) % Target::ALL.len()];
                let pid = match target {
                    Target::Direct => None,
                    Target::PgBouncer => Some(pgbouncer.pid()),
                    Target::Pgwarden => Some(pgwarden.pid()),
                };
                let run = Run { pgbench: &pgbench_bin, at: endpoint(target), target, pid, ticks };
                let m = run.measure(row, settings, &interrupt)?;
                done += 1;
                eprintln!(
                    "[{done:>2}/{total}] {:<8} c={:<2} {:<9} {:>9.0} tps  {:.3} ms",
                    row.mode.as_str(),
                    row.clients,
                    target.name(),
                    m.sample.tps,
                    m.sample.latency_ms
                );
                row.push(target, m);
            }
        }
    }

    let meta = Meta {
        started_utc: started,
        finished_utc: report::utc_now().0,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu_model(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        loadavg_start,
        loadavg_end: read_trimmed("/proc/loadavg"),
        postgres: first_line(Command::new(cluster.bindir().join("postgres")).arg("--version")),
        pgbench: first_line(Command::new(&pgbench_bin).arg("--version")),
        pgbouncer: bouncer::version(&bouncer_bin),
        pgwarden: warden::version(&warden_bin),
        git_rev: first_line(Command::new("git").arg("-C").arg(warden::workspace_root()).args([
            "rev-parse",
            "--short",
            "HEAD",
        ])),
        scale: settings.scale,
        seconds: settings.seconds,
        warmup_seconds: settings.warmup_seconds,
        rounds: settings.rounds,
        pgwarden_workers: settings.pgwarden_workers,
    };
    let (json, svg) = write_results(&settings.out_dir, &stamp, &meta, &rows)?;

    println!();
    println!(
        "pgbench -S, scale {}, {} s per run after {} s warm-up, {} round(s) (median), {} CPUs; TPS and mean latency (ms)",
        meta.scale, meta.seconds, meta.warmup_seconds, meta.rounds, meta.cpus
    );
    println!(
        "load average before the first run: {}; at end: {}",
        meta.loadavg_start, meta.loadavg_end
    );
    println!();
    print!("{}", report::text_table(&rows));
    println!();
    println!("{}", report::verdict(&rows));
    println!();
    println!("markdown:");
    println!();
    print!("{}", report::markdown_table(&rows));
    println!();
    println!("wrote {}", json.display());
    println!("wrote {}", svg.display());
    Ok(())
}

/// A throwaway Postgres with database `bench` filled by `pgbench -i -s
/// scale`; the pgbench binary and the direct endpoint (role `pgw_trust`).
pub fn start_postgres(scale: u32) -> Result<(Cluster, PathBuf, Endpoint)> {
    eprintln!("starting a throwaway Postgres");
    let cluster = Cluster::start(None).context("starting a throwaway Postgres")?;
    cluster
        .psql("postgres", &format!("CREATE DATABASE {DATABASE}"))
        .context("creating the benchmark database")?;
    let pgbench_bin = pgbench::binary(cluster.bindir());
    let direct =
        Endpoint { port: cluster.port(), user: roles::TRUST.into(), database: DATABASE.into() };
    eprintln!("pgbench -i -s {scale}");
    pgbench::init(&pgbench_bin, &direct, scale)?;
    Ok((cluster, pgbench_bin, direct))
}

/// One pgbench run through one target.
struct Run<'a> {
    pgbench: &'a Path,
    at: Endpoint,
    target: Target,
    /// The proxy process, whose CPU time is measured; `None` for direct.
    pid: Option<u32>,
    ticks: f64,
}

impl Run<'_> {
    /// The warm-up (not kept), then the measured run with the proxy's CPU time.
    fn measure(
        &self,
        row: &Row,
        settings: &Settings,
        interrupt: &Interrupt,
    ) -> Result<Measurement> {
        let what = |phase: &str| {
            format!(
                "{phase}pgbench -M {} -c {} through {}",
                row.mode.as_str(),
                row.clients,
                self.target.name()
            )
        };
        interrupt.check()?;
        if settings.warmup_seconds > 0 {
            pgbench::select_only(
                self.pgbench,
                &self.at,
                row.mode,
                row.clients,
                settings.warmup_seconds,
            )
            .with_context(|| what("warm-up "))?;
            interrupt.check()?;
        }
        let cpu = |pid| procs::cpu_seconds(pid, self.ticks);
        let before = self.pid.map(cpu).transpose()?;
        let sample =
            pgbench::select_only(self.pgbench, &self.at, row.mode, row.clients, settings.seconds)
                .with_context(|| what(""))?;
        let proxy_cpu_s = match (self.pid, before) {
            (Some(pid), Some(before)) => Some(cpu(pid)? - before),
            _ => None,
        };
        Ok(Measurement { sample, proxy_cpu_s })
    }
}

/// Writes `passthrough-<stamp>.json` and `.svg`; returns their paths.
fn write_results(dir: &Path, stamp: &str, meta: &Meta, rows: &[Row]) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(format!("passthrough-{stamp}.json"));
    let svg = dir.join(format!("passthrough-{stamp}.svg"));
    std::fs::write(&json, report::json(meta, rows))
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&svg, report::svg(meta, rows))
        .with_context(|| format!("writing {}", svg.display()))?;
    Ok((json, svg))
}

pub(crate) fn first_line(cmd: &mut Command) -> String {
    procs::output(cmd, "version")
        .map(|s| s.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
