//! pgwarden under test: the release binary, built by the runner, run as a
//! separate process: in pass-through mode (no encrypted columns, no audit),
//! or with the config a suite writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{self, ScratchDir, Service};

/// The workspace this runner was built in.
pub fn workspace_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// Builds `target/release/pgwarden` with `cargo build --release -p pgwarden
/// --locked` (a no-op when it is up to date) and returns its path.
pub fn build_release() -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building pgwarden: cargo build --release -p pgwarden --locked");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "pgwarden", "--locked"])
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {cargo:?}"))?;
    if !status.success() {
        bail!("`cargo build --release -p pgwarden --locked` failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() { target } else { root.join(target) };
    let bin = target.join("release").join("pgwarden");
    if !bin.is_file() {
        bail!("cargo built pgwarden, but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// `pgwarden --version`.
pub fn version(bin: &Path) -> String {
    procs::output(Command::new(bin).arg("--version"), "pgwarden --version")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A running pgwarden relaying to the Postgres on `upstream_port`.
pub struct Pgwarden {
    pub port: u16,
    /// Stops the process on drop.
    service: Service,
}

/// What the suites other than pass-through add to pgwarden's config, and the
/// name of its files in the scratch directory.
#[derive(Debug, Clone)]
pub struct Extra {
    /// `NAME.toml` and `NAME.log`.
    pub name: &'static str,
    /// Lines appended to `[listen]` (e.g. `tls_cert = "..."`).
    pub listen: String,
    /// Lines appended to `[upstream]` (e.g. `admin_user = "..."`).
    pub upstream: String,
    /// Whole sections appended at the end (e.g. `[audit]`).
    pub sections: String,
}

impl Default for Extra {
    fn default() -> Self {
        Self {
            name: "pgwarden",
            listen: String::new(),
            upstream: String::new(),
            sections: String::new(),
        }
    }
}

impl Pgwarden {
    /// pgwarden in pass-through mode.
    pub fn start(bin: &Path, dir: &ScratchDir, upstream_port: u16, workers: u16) -> Result<Self> {
        Self::start_extra(bin, dir, upstream_port, workers, &Extra::default())
    }

    /// [`Pgwarden::start`] with `extra` in its config.
    pub fn start_extra(
        bin: &Path,
        dir: &ScratchDir,
        upstream_port: u16,
        workers: u16,
        extra: &Extra,
    ) -> Result<Self> {
        Self::start_named(bin, dir, extra.name, |port| config(port, upstream_port, workers, extra))
    }

    /// pgwarden with the config `toml(listen port)` returns.
    pub fn start_with(bin: &Path, dir: &ScratchDir, toml: impl Fn(u16) -> String) -> Result<Self> {
        Self::start_named(bin, dir, "pgwarden", toml)
    }

    /// Writes `NAME.toml`, logs to `NAME.log`.
    fn start_named(
        bin: &Path,
        dir: &ScratchDir,
        name: &str,
        toml: impl Fn(u16) -> String,
    ) -> Result<Self> {
        let mut last = None;
        // The port may be taken between our probe and pgwarden's bind.
        for _ in 0..3 {
            let port = procs::free_port()?;
            match Self::start_on(bin, dir, name, port, &toml(port)) {
                Ok(w) => return Ok(w),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("pgwarden did not start")))
    }

    fn start_on(bin: &Path, dir: &ScratchDir, name: &str, port: u16, toml: &str) -> Result<Self> {
        // Catch a schema change here, with every problem listed, rather than
        // as a process that exits at once.
        check_config(toml)?;
        let file = dir.write(&format!("{name}.toml"), toml, None)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(&file).env("PGWARDEN_LOG", "warn");
        // Overrides from the caller's environment would change what we measure.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PGWARDEN__") {
                cmd.env_remove(name);
            }
        }
        let log = dir.path().join(format!("{name}.log"));
        let mut service = Service::spawn("pgwarden", cmd, log)?;
        service.wait_ready(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(15))?;
        Ok(Self { port, service })
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// SIGTERM and a clean exit within `grace` (the audit log's shutdown seal
    /// is written then), else an error.
    pub fn shut_down(self, grace: Duration) -> Result<()> {
        self.service.shut_down(grace)
    }
}

/// Parses and validates a generated config, listing every problem.
pub fn check_config(toml: &str) -> Result<pgwarden_config::Config> {
    let config = pgwarden_config::load_str(toml, std::iter::empty())
        .map_err(|e| anyhow::anyhow!("the generated pgwarden config is invalid: {e}"))?;
    let problems = config.validate();
    if !problems.is_empty() {
        bail!("the generated pgwarden config is invalid: {}", problems.join("; "));
    }
    Ok(config)
}

/// Pass-through: listen and upstream only, everything else at its default;
/// plus `extra`.
fn config(port: u16, upstream_port: u16, workers: u16, extra: &Extra) -> String {
    format!(
        "\
[listen]
address = \"127.0.0.1:{port}\"
worker_threads = {workers}
{listen}
[upstream]
host = \"127.0.0.1\"
port = {upstream_port}
tls = \"disable\"
{upstream}{sections}",
        listen = extra.listen,
        upstream = extra.upstream,
        sections = extra.sections,
    )
}
