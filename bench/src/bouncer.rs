//! PgBouncer, the reference: installed with apt when missing, run as the
//! `postgres` OS user (it refuses root) with an ini file of our own, in
//! session mode, and stopped at the end.
//!
//! The package's own service (if the package scripts started one) is not used:
//! our process has its own ini, port and no Unix socket.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::pgbench::Endpoint;
use crate::procs::{self, Owner, ScratchDir, Service};

/// Where the Debian package puts the binary, which is not on a non-root PATH.
const SBIN: &str = "/usr/sbin/pgbouncer";

/// Finds pgbouncer, installing the Debian package if it is missing.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("pgbouncer not found: installing it with `apt-get install -y pgbouncer`");
    let apt = |args: &[&str]| -> Result<()> {
        procs::output(
            Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get {}", args.join(" ")),
        )
        .map(|_| ())
    };
    let installed = apt(&["update"]).and_then(|()| apt(&["install", "-y", "pgbouncer"]));
    if let Err(e) = installed {
        bail!(
            "PgBouncer is not installed and installing it failed. Install it by hand \
             (Debian/Ubuntu: `sudo apt-get install pgbouncer`) and run again.\n{e:#}"
        );
    }
    find()
        .context("apt-get installed pgbouncer, but no pgbouncer binary is on PATH or in /usr/sbin")
}

fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join("pgbouncer")).find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(SBIN)).filter(|p| p.is_file()))
}

/// `pgbouncer --version`, first line.
pub fn version(bin: &Path) -> String {
    procs::output(Command::new(bin).arg("--version"), "pgbouncer --version")
        .map(|v| v.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A running PgBouncer in front of the Postgres at `upstream`.
pub struct PgBouncer {
    pub port: u16,
    /// Stops the process on drop.
    service: Service,
}

impl PgBouncer {
    /// Writes the ini and auth file into `dir` and starts PgBouncer on a free
    /// port. `owner`: the OS user to run as (`postgres` when we are root).
    pub fn start(
        bin: &Path,
        dir: &ScratchDir,
        owner: Option<Owner>,
        upstream: &Endpoint,
    ) -> Result<Self> {
        Self::start_with(bin, dir, owner, upstream, "")
    }

    /// [`PgBouncer::start`] with `extra` lines (e.g. `client_tls_*`) appended
    /// to the `[pgbouncer]` section.
    pub fn start_with(
        bin: &Path,
        dir: &ScratchDir,
        owner: Option<Owner>,
        upstream: &Endpoint,
        extra: &str,
    ) -> Result<Self> {
        let mut last = None;
        // The port may be taken between our probe and PgBouncer's bind.
        for _ in 0..3 {
            let port = procs::free_port()?;
            match Self::start_on(bin, dir, owner, upstream, port, extra) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PgBouncer did not start")))
    }

    fn start_on(
        bin: &Path,
        dir: &ScratchDir,
        owner: Option<Owner>,
        upstream: &Endpoint,
        port: u16,
        extra: &str,
    ) -> Result<Self> {
        let auth_file =
            dir.write("userlist.txt", &format!("\"{}\" \"\"\n", upstream.user), owner)?;
        let ini = ini(upstream, port, &auth_file) + extra;
        let ini = dir.write("pgbouncer.ini", &ini, owner)?;
        let mut cmd = Command::new(bin);
        cmd.arg(&ini);
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid).env("HOME", dir.path());
        }
        let mut service = Service::spawn("pgbouncer", cmd, dir.path().join("pgbouncer.log"))?;
        service.wait_ready(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(15))?;
        Ok(Self { port, service })
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }
}

/// The ini: session pooling (each client keeps one server connection, as it
/// does through pgwarden), trust for the one benchmark role (the cluster trusts
/// it too, so no target pays for authentication), pools far larger than 16
/// clients, TCP on 127.0.0.1 only, logging to stderr (our log file).
fn ini(upstream: &Endpoint, port: u16, auth_file: &Path) -> String {
    format!(
        "\
[databases]
{db} = host=127.0.0.1 port={pg} dbname={db} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth}
pool_mode = session
max_client_conn = 200
default_pool_size = 64
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
",
        db = upstream.database,
        pg = upstream.port,
        user = upstream.user,
        auth = auth_file.display(),
    )
}
