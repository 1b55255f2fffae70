//! `pgwarden-bench tls`: client TLS through pgwarden and through PgBouncer.
//!
//! Both proxies get the same certificate (made here with rcgen, into the
//! scratch directory), both require TLS from clients, and both talk plaintext
//! to Postgres. pgbench runs with `sslmode=require`, twice per target and
//! round:
//!
//! - steady: `pgbench -S -M prepared -c 16`, TPS without connection time;
//! - reconnect: the same with `-C`, a new connection (TCP, TLS handshake,
//!   startup) for every transaction, so TPS is the connection setup rate;
//! - reconnect, no server reuse: `-C` again, against a second PgBouncer with
//!   `server_lifetime = 0`, which closes each server connection after its
//!   client instead of handing it to the next one, and a second pgwarden
//!   without `upstream.reuse_idle`: both then open a Postgres connection (a
//!   backend) per client connection.
//!
//! The first pgwarden keeps server connections as PgBouncer's session pool
//! does (`upstream.reuse_idle = 64`, PgBouncer's `default_pool_size`): the
//! bench's logins are trust, which pgwarden may hand on (DESIGN.md relays
//! password logins, which it never keeps).
//!
//! Everything it started is stopped and removed at exit, on error and on
//! Ctrl-C, by the same guards as the pass-through run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

use crate::bouncer::{self, PgBouncer};
use crate::pgbench::{self, Endpoint, Mode, Options};
use crate::procs::{self, Interrupt, Owner, ScratchDir};
use crate::report::{self, Measurement, Row, Target};
use crate::runner;
use crate::warden::{self, Extra, Pgwarden};

/// What to run; from the command line (shared with the audit suite).
#[derive(Debug, Clone)]
pub struct Settings {
    pub scale: u32,
    pub seconds: u32,
    pub warmup_seconds: u32,
    pub rounds: u32,
    pub clients: u32,
    pub pgwarden_bin: Option<PathBuf>,
    pub pgwarden_workers: u16,
    pub out_dir: PathBuf,
}

impl Settings {
    /// The measured settings, as the JSON results record them.
    pub fn json(&self) -> String {
        format!(
            "{{\"scale\": {}, \"seconds\": {}, \"warmup_seconds\": {}, \"rounds\": {}, \
             \"clients\": {}, \"pgwarden_worker_threads\": {}}}",
            self.scale,
            self.seconds,
            self.warmup_seconds,
            self.rounds,
            self.clients,
            self.pgwarden_workers
        )
    }
}

/// The loads: label, `-C`, and whether PgBouncer may hand a server
/// connection to the next client (its default, session pooling).
const WORKLOADS: [(&str, bool, bool); 3] = [
    ("steady", false, true),
    ("reconnect -C", true, true),
    ("reconnect -C, no server reuse", true, false),
];

/// `upstream.reuse_idle` of the pgwarden that keeps server connections:
/// PgBouncer's `default_pool_size` in this bench.
const REUSE_IDLE: u32 = 64;

/// The two targets, in the order of the first round.
const TARGETS: [Target; 2] = [Target::PgBouncer, Target::Pgwarden];

pub fn run(settings: &Settings) -> Result<()> {
    let interrupt = Interrupt::install();
    let (started, stamp) = report::utc_now();
    let warden_bin = match &settings.pgwarden_bin {
        Some(bin) => bin.clone(),
        None => warden::build_release()?,
    };
    let bouncer_bin = bouncer::ensure_installed()?;
    interrupt.check()?;

    let (cluster, pgbench_bin, direct) = runner::start_postgres(settings.scale)?;
    interrupt.check()?;
    let owner = if procs::running_as_root()? {
        Some(procs::os_user("postgres").context("PgBouncer refuses to run as root")?)
    } else {
        None
    };
    let scratch = ScratchDir::create(owner)?;
    let (cert, key) = write_certificate(&scratch, owner)?;
    let bouncer_tls = format!(
        "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        cert.display(),
        key.display()
    );
    let pgbouncer = PgBouncer::start_with(&bouncer_bin, &scratch, owner, &direct, &bouncer_tls)?;
    // Its own directory: ini and log files of its own.
    let unpooled_dir = ScratchDir::create(owner)?;
    let unpooled = PgBouncer::start_with(
        &bouncer_bin,
        &unpooled_dir,
        owner,
        &direct,
        &format!("{bouncer_tls}server_lifetime = 0\n"),
    )?;
    let extra = Extra {
        listen: format!(
            "tls_cert = {}\ntls_key = {}\nrequire_tls = true\n",
            report::js(&cert.display().to_string()),
            report::js(&key.display().to_string())
        ),
        upstream: format!("reuse_idle = {REUSE_IDLE}\n"),
        ..Extra::default()
    };
    let pgwarden = Pgwarden::start_extra(
        &warden_bin,
        &scratch,
        direct.port,
        settings.pgwarden_workers,
        &extra,
    )?;
    let fresh_extra = Extra { name: "pgwarden-fresh", upstream: String::new(), ..extra };
    let fresh = Pgwarden::start_extra(
        &warden_bin,
        &scratch,
        direct.port,
        settings.pgwarden_workers,
        &fresh_extra,
    )?;
    eprintln!(
        "postgres on 127.0.0.1:{} (plaintext), pgbouncer on :{} (pid {}) and with server_lifetime = 0 on :{} (pid {}), pgwarden with reuse_idle = {REUSE_IDLE} on :{} (pid {}) and without on :{} (pid {}), all with client TLS",
        direct.port,
        pgbouncer.port,
        pgbouncer.pid(),
        unpooled.port,
        unpooled.pid(),
        pgwarden.port,
        pgwarden.pid(),
        fresh.port,
        fresh.pid()
    );
    let ticks = procs::clock_ticks();
    let loadavg_start = runner::read_trimmed("/proc/loadavg");
    let threads = settings.clients.clamp(1, 2);
    let mut rows: Vec<Row> =
        WORKLOADS.iter().map(|_| Row::new(Mode::Prepared, settings.clients, threads)).collect();
    let total = rows.len() * TARGETS.len() * settings.rounds as usize;
    let mut done = 0;
    for round in 0..settings.rounds as usize {
        for (i, row) in rows.iter_mut().enumerate() {
            let (label, reconnect, reuse) = WORKLOADS[i];
            let (bouncer, warden) =
                if reuse { (&pgbouncer, &pgwarden) } else { (&unpooled, &fresh) };
            for k in 0..TARGETS.len() {
                // The first target alternates between loads and rounds.
                let target = TARGETS[(i + round + k) % TARGETS.len()];
                let (port, pid) = match target {
                    Target::PgBouncer => (bouncer.port, bouncer.pid()),
                    _ => (warden.port, warden.pid()),
                };
                let load = Load {
                    pgbench: &pgbench_bin,
                    at: Endpoint { port, ..direct.clone() },
                    mode: Mode::Prepared,
                    clients: settings.clients,
                    options: Options { sslmode: "require", reconnect },
                    pid: Some(pid),
                    ticks,
                    what: format!("{label} through {}", target.name()),
                };
                let m = load.measure(settings.seconds, settings.warmup_seconds, &interrupt)?.0;
                done += 1;
                eprintln!(
                    "[{done:>2}/{total}] {label:<29} c={} {:<9} {:>9.0} tps  {:.3} ms",
                    settings.clients,
                    target.name(),
                    m.sample.tps,
                    m.sample.latency_ms
                );
                row.push(target, m);
            }
        }
    }
    let loadavg_end = runner::read_trimmed("/proc/loadavg");

    let table = markdown_table(&rows);
    println!();
    println!(
        "pgbench -S -M prepared -c {} -j {threads}, sslmode=require to both proxies (same certificate), plaintext to Postgres; scale {}, {} s per run after {} s warm-up, median of {} round(s)",
        settings.clients, settings.scale, settings.seconds, settings.warmup_seconds, settings.rounds
    );
    println!("load average before the first run: {loadavg_start}; at end: {loadavg_end}");
    println!();
    print!("{table}");
    println!();
    println!("{}", verdict(&rows));
    let json = json(
        settings,
        &rows,
        &started,
        &loadavg_start,
        &loadavg_end,
        &[
            (
                "postgres",
                runner::first_line(
                    Command::new(cluster.bindir().join("postgres")).arg("--version"),
                ),
            ),
            ("pgbench", runner::first_line(Command::new(&pgbench_bin).arg("--version"))),
            ("pgbouncer", bouncer::version(&bouncer_bin)),
            ("pgwarden", warden::version(&warden_bin)),
        ],
    );
    let path = write_json(&settings.out_dir, &format!("tls-{stamp}.json"), &json)?;
    println!();
    println!("wrote {}", path.display());
    // A clean exit on SIGTERM, as in production; PgBouncer and Postgres stop
    // by their guards.
    pgwarden.shut_down(Duration::from_secs(10))
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signs,
/// written as `server.pem` (chain: leaf, then CA) and `server.key`, readable by
/// `owner` (PgBouncer's OS user); their paths.
fn write_certificate(dir: &ScratchDir, owner: Option<Owner>) -> Result<(PathBuf, PathBuf)> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pgwarden-bench CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA certificate")?;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);

    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).context("signing the server certificate")?;
    let chain = format!("{}{}", cert.pem(), ca_cert.pem());
    let cert_path = dir.write("server.pem", &chain, owner)?;
    let key_path = dir.write("server.key", &key.serialize_pem(), owner)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok((cert_path, key_path))
}

/// One pgbench load through one target, measured with the proxy's CPU time.
pub struct Load<'a> {
    pub pgbench: &'a Path,
    pub at: Endpoint,
    pub mode: Mode,
    pub clients: u32,
    pub options: Options,
    /// The proxy process whose CPU time is sampled.
    pub pid: Option<u32>,
    pub ticks: f64,
    /// For error messages.
    pub what: String,
}

impl Load<'_> {
    /// The warm-up (not kept), then the measured run; the measurement and the
    /// warm-up's sample (`None` without one).
    pub fn measure(
        &self,
        seconds: u32,
        warmup_seconds: u32,
        interrupt: &Interrupt,
    ) -> Result<(Measurement, Option<pgbench::Sample>)> {
        let go = |secs| {
            pgbench::select_only_with(
                self.pgbench,
                &self.at,
                self.mode,
                self.clients,
                secs,
                &self.options,
            )
        };
        interrupt.check()?;
        let warmup = if warmup_seconds > 0 {
            let s = go(warmup_seconds).with_context(|| format!("warm-up {}", self.what))?;
            interrupt.check()?;
            Some(s)
        } else {
            None
        };
        let cpu = |pid| procs::cpu_seconds(pid, self.ticks);
        let before = self.pid.map(cpu).transpose()?;
        let sample = go(seconds).with_context(|| format!("pgbench {}", self.what))?;
        let proxy_cpu_s = match (self.pid, before) {
            (Some(pid), Some(before)) => Some(cpu(pid)? - before),
            _ => None,
        };
        Ok((Measurement { sample, proxy_cpu_s }, warmup))
    }
}

fn cpu(us: Option<f64>) -> String {
    us.map_or_else(|| "-".into(), |us| format!("{us:.1}"))
}

fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| load | clients | PgBouncer TPS (ms) | pgwarden TPS (ms) | pgwarden / PgBouncer \
         | PgBouncer CPU µs/txn | pgwarden CPU µs/txn |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (r, (label, _, _)) in rows.iter().zip(WORKLOADS) {
        let _ = writeln!(
            out,
            "| {label} | {} | {:.0} ({:.3}) | {:.0} ({:.3}) | {:.3} | {} | {} |",
            r.clients,
            r.tps(Target::PgBouncer),
            r.latency_ms(Target::PgBouncer),
            r.tps(Target::Pgwarden),
            r.latency_ms(Target::Pgwarden),
            r.ratio(Target::Pgwarden, Target::PgBouncer),
            cpu(r.cpu_us_per_txn(Target::PgBouncer)),
            cpu(r.cpu_us_per_txn(Target::Pgwarden)),
        );
    }
    out
}

fn verdict(rows: &[Row]) -> String {
    let below: Vec<String> = rows
        .iter()
        .zip(WORKLOADS)
        .map(|(r, (label, _, _))| (label, r.ratio(Target::Pgwarden, Target::PgBouncer)))
        .filter(|(_, ratio)| ratio.is_nan() || *ratio < 1.0)
        .map(|(label, ratio)| format!("{label} ({ratio:.3})"))
        .collect();
    if below.is_empty() {
        "target met: pgwarden TPS >= PgBouncer TPS with client TLS, steady and reconnecting".into()
    } else {
        format!(
            "target missed: pgwarden TPS < PgBouncer TPS with client TLS in {}",
            below.join(", ")
        )
    }
}

fn json(
    settings: &Settings,
    rows: &[Row],
    started: &str,
    loadavg_start: &str,
    loadavg_end: &str,
    versions: &[(&str, String)],
) -> String {
    let mut out = report::json_header(
        "tls",
        "pgbench -S -M prepared with sslmode=require through PgBouncer (client_tls_sslmode=require) and pgwarden (listen.tls_cert/tls_key), same certificate, plaintext to Postgres; steady TPS without connection time, -C (a connection per transaction), pgwarden with upstream.reuse_idle = 64 as PgBouncer's session pool; and -C against a second PgBouncer with server_lifetime = 0 and a second pgwarden without reuse_idle (no server connection reused); median over rounds",
        started,
        loadavg_start,
        loadavg_end,
    );
    let v: Vec<String> =
        versions.iter().map(|(k, v)| format!("{}: {}", report::js(k), report::js(v))).collect();
    let _ = writeln!(out, "  \"versions\": {{{}}},", v.join(", "));
    let _ = writeln!(out, "  \"settings\": {},", settings.json());
    out.push_str("  \"results\": [\n");
    for (i, (r, (label, reconnect, reuse))) in rows.iter().zip(WORKLOADS).enumerate() {
        let _ = write!(
            out,
            "    {{\"load\": {}, \"reconnect\": {reconnect}, \"pgbouncer_server_reuse\": {reuse}, \"pgbouncer_tps\": {}, \"pgwarden_tps\": {}, \"pgwarden_over_pgbouncer\": {}, \"pgbouncer_cpu_us_per_txn\": {}, \"pgwarden_cpu_us_per_txn\": {}}}",
            report::js(label),
            report::num(r.tps(Target::PgBouncer)),
            report::num(r.tps(Target::Pgwarden)),
            report::num(r.ratio(Target::Pgwarden, Target::PgBouncer)),
            r.cpu_us_per_txn(Target::PgBouncer).map_or_else(|| "null".into(), report::num),
            r.cpu_us_per_txn(Target::Pgwarden).map_or_else(|| "null".into(), report::num),
        );
        out.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

/// Writes `name` into `dir` (created if needed); its path.
pub fn write_json(dir: &Path, name: &str, json: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
