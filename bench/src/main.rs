//! `pgwarden-bench`: the end-to-end benchmark runner. By default (the
//! pass-through run) it starts a throwaway Postgres, PgBouncer and a release
//! pgwarden, runs `pgbench -S` in every protocol mode at 1 and 16 clients
//! through each of the three, and prints and saves the TPS ratios. The
//! `encryption` suite compares a table with encrypted columns to a plaintext
//! one, both through pgwarden. Everything a run started is stopped and
//! removed at exit, on error and on Ctrl-C.
//!
//! ```text
//! cargo run --release -p pgwarden-bench -- --seconds 10
//! cargo run --release -p pgwarden-bench -- encryption
//! cargo run --release -p pgwarden-bench -- tls --rounds 3    # client TLS
//! cargo run --release -p pgwarden-bench -- audit --rounds 3  # audit sinks
//! ```
//!
//! # Layout
//! - `runner`: the pass-through run, in order: build, install, start,
//!   measure, report.
//! - `encryption`: the encryption suite, with its own tables and report.
//! - `tls`, `audit`: the suites for client TLS and for the audit log.
//! - `pgbench`: invoking pgbench and parsing its summary.
//! - `bouncer`: installing and running PgBouncer.
//! - `warden`: building and running pgwarden.
//! - `report`: terminal and markdown tables, JSON, SVG chart.
//! - `procs`: guards for child processes and scratch files, signal handling.

mod audit;
mod bouncer;
mod encryption;
mod pgbench;
mod procs;
mod report;
mod runner;
mod tls;
mod warden;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::pgbench::Mode;

#[derive(Parser)]
#[command(
    name = "pgwarden-bench",
    about = "pgbench -S through direct Postgres, PgBouncer and pgwarden, as ratios \
             (default); `encryption`: encrypted vs plaintext columns; `tls`: client TLS against \
             PgBouncer; `audit`: audit sinks on vs off",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    suite: Option<Suite>,
    #[command(flatten)]
    passthrough: Passthrough,
}

#[derive(Subcommand)]
enum Suite {
    /// SELECT, INSERT and COPY of the same rows through pgwarden, in a table
    /// with two encrypted text columns and in a plaintext one, as ratios.
    Encryption(Encryption),
    /// pgbench -S -M prepared with client TLS (sslmode=require) through
    /// PgBouncer and pgwarden, steady and with -C (a connection per transaction).
    Tls(SuiteArgs),
    /// pgbench -S -M prepared through pgwarden with the audit log off, to the
    /// file sink and to the postgres sink; checks and verifies every log.
    Audit(SuiteArgs),
}

#[derive(Args)]
struct Encryption {
    /// Rows per table (rounded up to a multiple of 100, the INSERT batch).
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Repeat every measurement this many times and report the median.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Use this pgwarden binary instead of building target/release/pgwarden.
    #[arg(long)]
    pgwarden_bin: Option<PathBuf>,
    /// Directory for the JSON results.
    #[arg(long, default_value_os_t = default_out_dir())]
    out: PathBuf,
}

impl Encryption {
    fn settings(self) -> encryption::Settings {
        let batch = encryption::INSERT_BATCH;
        encryption::Settings {
            rows: self.rows.max(1).div_ceil(batch) * batch,
            rounds: self.rounds.max(1),
            pgwarden_bin: self.pgwarden_bin,
            out_dir: self.out,
        }
    }
}

#[derive(Args)]
struct SuiteArgs {
    /// Seconds per measured pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// pgbench scale factor (-s) for `pgbench -i`.
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Seconds of warm-up before each measured run (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Repeat every run this many times and report the median.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// pgbench -c (with -j min(clients, 2)).
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Use this pgwarden binary instead of building target/release/pgwarden.
    #[arg(long)]
    pgwarden_bin: Option<PathBuf>,
    /// pgwarden's `listen.worker_threads` (0: one per CPU, 1: a single thread).
    #[arg(long, default_value_t = 0)]
    pgwarden_workers: u16,
    /// Directory for the JSON results.
    #[arg(long, default_value_os_t = default_out_dir())]
    out: PathBuf,
}

impl SuiteArgs {
    fn settings(self) -> tls::Settings {
        tls::Settings {
            scale: self.scale.max(1),
            seconds: self.seconds.max(1),
            warmup_seconds: self.warmup,
            rounds: self.rounds.max(1),
            clients: self.clients.max(1),
            pgwarden_bin: self.pgwarden_bin,
            pgwarden_workers: self.pgwarden_workers,
            out_dir: self.out,
        }
    }
}

/// The pass-through run's flags.
#[derive(Args)]
struct Passthrough {
    /// Seconds per measured pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// pgbench scale factor (-s) for `pgbench -i`.
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Seconds of warm-up before each measured run (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Repeat the whole matrix this many times and report the median.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// A ~1-minute sanity run: scale 1, 2 s runs, 1 s warm-up, one round.
    #[arg(long)]
    quick: bool,
    /// pgbench query modes to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "simple,extended,prepared")]
    modes: Vec<Mode>,
    /// Client counts to run (pgbench -c; -j is min(clients, 2)).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    clients: Vec<u32>,
    /// Use this pgwarden binary instead of building target/release/pgwarden.
    #[arg(long)]
    pgwarden_bin: Option<PathBuf>,
    /// pgwarden's `listen.worker_threads` (0: one per CPU, 1: a single thread).
    #[arg(long, default_value_t = 0)]
    pgwarden_workers: u16,
    /// Directory for the JSON and SVG results.
    #[arg(long, default_value_os_t = default_out_dir())]
    out: PathBuf,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

impl Passthrough {
    fn settings(self) -> runner::Settings {
        let (scale, seconds, warmup_seconds, rounds) = if self.quick {
            (1, 2, 1, 1)
        } else {
            (self.scale, self.seconds, self.warmup, self.rounds)
        };
        runner::Settings {
            scale: scale.max(1),
            seconds: seconds.max(1),
            warmup_seconds,
            rounds: rounds.max(1),
            modes: self.modes,
            clients: self.clients.into_iter().filter(|&c| c > 0).collect(),
            pgwarden_bin: self.pgwarden_bin,
            pgwarden_workers: self.pgwarden_workers,
            out_dir: self.out,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.suite {
        Some(Suite::Encryption(args)) => encryption::run(&args.settings()),
        Some(Suite::Tls(args)) => tls::run(&args.settings()),
        Some(Suite::Audit(args)) => audit::run(&args.settings()),
        None => runner::run(&cli.passthrough.settings()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
