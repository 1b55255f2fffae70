//! Command-line interface: `run`, `check-config`, `demo`, `keys`, `audit verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::listener::Proxy;

#[derive(Parser)]
#[command(name = "pgwarden", version, about = "PostgreSQL security proxy")]
struct Cli {
    /// Configuration file; with no subcommand, runs the proxy with it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr: `text` for terminals, `json` (one object per line)
    /// for log collectors. Verbosity comes from PGWARDEN_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create schema `pgwarden`, a data key per key name, register the columns
    /// and install the CHECK guard on each. Safe to run again.
    Init,
    /// List key versions, status and fingerprints (never key bytes).
    List,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the HMAC chain through FILE... (the current file and its rotated
    /// ones, in any order): exit 0 when intact, 1 naming the first bad
    /// record otherwise.
    Verify {
        /// Audit files: FILE and FILE.<seq> rotated from it.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The chain key, `env:VAR` or `file:PATH`; by default `[audit] key`
        /// of --config.
        #[arg(long)]
        key: Option<String>,
        /// Accept a log whose end is not a shutdown seal (a proxy still
        /// writing it).
        #[arg(long)]
        open: bool,
        /// SEQ:MAC of the last record of files removed since (retention),
        /// as a verify of them printed: the files given must follow it.
        #[arg(long, value_name = "SEQ:MAC")]
        after: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run,
    /// Validate a configuration file; exit 1 with every problem listed.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Manage data keys: `init` creates the registry, keys and column guards;
    /// `list` shows key versions, status and fingerprints.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The audit log: `verify` checks its HMAC chain.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Start a throwaway Postgres with sample data and pgwarden in front of it.
    Demo {
        /// Port for the proxy (default 6432, or a free one if taken).
        #[arg(long)]
        port: Option<u16>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Some(Cmd::CheckConfig { file }) => return check_config(&file),
        Some(Cmd::Demo { port }) => crate::demo::run(port),
        Some(Cmd::Audit { action: AuditAction::Verify { files, key, open, after } }) => {
            return audit_verify(cli.config.as_deref(), key, &files, open, after.as_deref());
        }
        Some(Cmd::Keys { action }) => match cli.config {
            Some(path) => keys(&path, action),
            None => Err(anyhow::anyhow!("`pgwarden keys` needs --config FILE")),
        },
        Some(Cmd::Run) | None => match cli.config {
            Some(path) => run(&path),
            None => Err(anyhow::anyhow!(
                "no configuration: use `pgwarden run --config FILE` (see \
                 config/examples/pgwarden.toml) or try `pgwarden demo`"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Libraries that log statement text or parameter values at debug level
/// (the SQL parser its input, tokio-postgres the parameters of the proxy's
/// own queries): held at these levels whatever `PGWARDEN_LOG` says, so that
/// no plaintext of an encrypted column can reach the log.
const QUIET_TARGETS: &[&str] = &["sqlparser=warn", "tokio_postgres=warn"];

fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for directive in QUIET_TARGETS {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match pgwarden_config::load_file(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(
    config: Option<&std::path::Path>,
    key: Option<String>,
    files: &[PathBuf],
    open: bool,
    after: Option<&str>,
) -> ExitCode {
    let anchor = match after.map(parse_anchor).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgwarden audit verify: {e}");
            return ExitCode::from(2);
        }
    };
    let secret = match (key, config) {
        (Some(k), _) => toml_secret(&k),
        (None, Some(path)) => match pgwarden_config::load_file(path) {
            Ok(c) => c.audit.key.ok_or_else(|| format!("{}: no [audit] key", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        (None, None) => {
            Err("give the chain key with --key env:VAR|file:PATH or --config FILE".into())
        }
    };
    let key = match secret.and_then(|s| s.resolve()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pgwarden audit verify: {e}");
            return ExitCode::from(2);
        }
    };
    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    match crate::audit::chain::verify(key.expose().as_bytes(), &paths, open, anchor) {
        Ok(v) => {
            println!(
                "ok: {} records, seq {}..{}, last mac {} (keep `{}:{}` for --after once these \
                 files are removed)",
                v.records, v.first_seq, v.last_seq, v.last_mac, v.last_seq, v.last_mac
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgwarden audit verify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--after SEQ:MAC`: a seq and a MAC of 64 lower-case hex digits.
fn parse_anchor(text: &str) -> Result<(u64, &str), String> {
    let bad = || format!("--after wants SEQ:MAC (as verify prints them), not {text:?}");
    let (seq, mac) = text.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse::<u64>().map_err(|_| bad())?;
    let hex = mac.len() == 64 && mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex {
        return Err(bad());
    }
    Ok((seq, mac))
}

/// A secret reference given on the command line, as the config reads it.
fn toml_secret(text: &str) -> Result<pgwarden_config::Secret, String> {
    use pgwarden_config::Secret;
    match (text.strip_prefix("env:"), text.strip_prefix("file:")) {
        (Some(var), _) if !var.is_empty() => Ok(Secret::Env(var.into())),
        (_, Some(path)) if !path.is_empty() => Ok(Secret::File(path.into())),
        _ => Err("--key must be \"env:VARIABLE\" or \"file:/path\", never the key itself".into()),
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Arc::new(pgwarden_config::load_file(path)?);
    runtime(config.listen.worker_threads)?.block_on(async {
        let proxy = Proxy::bind(config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        tokio::spawn(reload_on_sighup(path.to_path_buf(), proxy.handle()));
        proxy.run(shutdown).await?;
        Ok(())
    })
}

fn keys(path: &std::path::Path, action: KeysAction) -> anyhow::Result<()> {
    let config = pgwarden_config::load_file(path)?;
    runtime(1)?.block_on(async {
        let mut db = crate::keys::connect_admin(&config).await?;
        match action {
            KeysAction::Init => {
                let r = crate::keys::init(&config, &mut db).await?;
                println!(
                    "keys created: {}
columns registered: {}
guards installed: {}",
                    if r.keys_created.is_empty() {
                        "none".into()
                    } else {
                        r.keys_created.join(", ")
                    },
                    r.columns_registered,
                    if r.guards_installed.is_empty() {
                        "none (already present)".into()
                    } else {
                        r.guards_installed.join(", ")
                    }
                );
            }
            KeysAction::List => print!("{}", crate::keys::list(&db).await?),
        }
        anyhow::Ok(())
    })
}

/// The runtime for `listen.worker_threads` (0: one thread per CPU).
pub(crate) fn runtime(worker_threads: u16) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
    };
    Ok(builder.enable_all().build()?)
}

/// Reloads the configuration file on every SIGHUP. An invalid file leaves the
/// running configuration in force; the reason is logged.
async fn reload_on_sighup(path: PathBuf, proxy: crate::listener::ProxyHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        let loaded = pgwarden_config::load_file(&path).map_err(|e| e.problems());
        match loaded.and_then(|c| proxy.reload(c)) {
            Ok(restart) if restart.is_empty() => {
                tracing::info!(file = %path.display(), "configuration reloaded");
            }
            Ok(restart) => tracing::warn!(
                file = %path.display(),
                needs_restart = %restart.join(", "),
                "configuration reloaded; these changes need a restart and keep their running values"
            ),
            Err(problems) => tracing::error!(
                file = %path.display(),
                problems = %problems.join("; "),
                "configuration reload refused; the running configuration stays in force"
            ),
        }
        if let Err(e) = proxy.reload_keys().await {
            tracing::error!(error = %e, "key reload failed; the loaded keys stay in force");
        }
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub(crate) async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}
