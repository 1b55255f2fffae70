//! Throwaway local Postgres clusters, made with the machine's server binaries:
//! for `pgwarden demo`, the test harness and the benchmarks.
//!
//! A cluster lives in a temporary directory, listens on 127.0.0.1 on a free port
//! and on a Unix socket inside its directory, and is stopped and removed on drop.
//! Run as root, the server runs as the `postgres` OS user (Postgres refuses root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Password of every role a cluster creates. Throwaway clusters only.
pub const PASSWORD: &str = "pgwarden-test-password";

/// Roles every cluster has, one per authentication method.
pub mod roles {
    /// Superuser, SCRAM-SHA-256 over TCP.
    pub const SUPERUSER: &str = "postgres";
    /// Superuser, SCRAM-SHA-256 over TCP.
    pub const SCRAM: &str = "pgw_scram";
    /// Superuser, md5 over TCP (its password is stored as md5).
    pub const MD5: &str = "pgw_md5";
    /// Superuser, cleartext password over TCP.
    pub const PASSWORD: &str = "pgw_password";
    /// Superuser, trust over TCP.
    pub const TRUST: &str = "pgw_trust";
}

const HBA: &str = "\
local all all trust
host all pgw_trust 127.0.0.1/32 trust
host all pgw_password 127.0.0.1/32 password
host all pgw_md5 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
";

/// The roles of [`roles`]; `{PASSWORD}` stands for [`PASSWORD`].
const ROLES_SQL: &str = "
ALTER ROLE postgres PASSWORD '{PASSWORD}';
CREATE ROLE pgw_scram SUPERUSER LOGIN PASSWORD '{PASSWORD}';
CREATE ROLE pgw_password SUPERUSER LOGIN PASSWORD '{PASSWORD}';
CREATE ROLE pgw_trust SUPERUSER LOGIN;
SET password_encryption = 'md5';
CREATE ROLE pgw_md5 SUPERUSER LOGIN PASSWORD '{PASSWORD}';
";

/// Server settings: fast and small, since several clusters run side by side and
/// their data is thrown away.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 250
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
log_min_messages = warning
";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found: looked at \
         $PGWARDEN_PG_BINDIR, `pg_config --bindir`, $PATH and /usr/lib/postgresql/*/bin. \
         Install them (Debian/Ubuntu: `apt-get install postgresql`) or set \
         PGWARDEN_PG_BINDIR to the directory holding initdb"
    )]
    NoBinaries,
    #[error("the OS user `postgres` is needed to run Postgres as root, and does not exist: {0}")]
    NoPostgresUser(String),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running throwaway cluster.
pub struct Cluster {
    /// Holds data directory, socket and log; removed on drop.
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

impl Cluster {
    /// Creates and starts a cluster with the [`roles`] above. With `template`,
    /// the initialised data directory is cached there and copied on later calls,
    /// which is much faster than running initdb each time.
    pub fn start(template: Option<&Path>) -> Result<Self, ClusterError> {
        let bindir = find_bindir()?;
        let owner = server_owner()?;
        let dir = tempfile::Builder::new().prefix("pgwarden-pg-").tempdir()?;
        chown(dir.path(), owner)?;
        let data = dir.path().join("data");
        match template {
            Some(t) => {
                let cached = ensure_template(&bindir, owner, t)?;
                run(Command::new("cp").arg("-a").arg(&cached).arg(&data), "copying the template")?;
            }
            None => init_data_dir(&bindir, owner, &data)?,
        }
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            match pg_ctl_start(&bindir, owner, dir.path(), port) {
                Ok(()) => return Ok(Self { dir, bindir, port, owner }),
                // Another process may have taken the port between our probe and
                // the server's bind; try another.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::NoBinaries))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory of the Unix socket (trust authentication for every role).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Turns TLS on with `cert_pem` and `key_pem` (as the data directory's
    /// `server.crt`/`server.key`), and waits until new connections get it.
    /// Connections over TCP may then use TLS or not, as pg_hba.conf's `host`
    /// lines allow both.
    pub fn enable_ssl(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            chown(&path, self.owner)?;
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        // The postmaster rereads its configuration asynchronously.
        for _ in 0..200 {
            if self.psql("postgres", "SHOW ssl")?.trim() == "on" {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(ClusterError::Command {
            what: "enabling ssl".into(),
            detail: format!("ssl is still off; see {}", self.log_path().display()),
        })
    }

    /// Runs SQL through psql on the Unix socket as the superuser; returns stdout.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let out = run(
            Command::new(psql_path(&self.bindir))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-U", roles::SUPERUSER, "-d", database])
                .args(["-c", sql]),
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        pg_ctl_stop(&self.bindir, self.owner, &self.data_dir(), true);
    }
}

fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn pg_ctl_start(
    bindir: &Path,
    owner: Option<(u32, u32)>,
    dir: &Path,
    port: u16,
) -> Result<(), ClusterError> {
    let opts = format!("-p {port} -k {}", dir.display());
    run(
        as_owner(Command::new(bindir.join("pg_ctl")), owner)
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"]),
        "pg_ctl start",
    )
    .map(|_| ())
}

/// Stops a server. `immediate` skips the shutdown checkpoint: right for a
/// cluster about to be deleted, wrong for one that is kept (with
/// `synchronous_commit = off` its last commits may not be on disk yet).
fn pg_ctl_stop(bindir: &Path, owner: Option<(u32, u32)>, data: &Path, immediate: bool) {
    let mode = if immediate { "immediate" } else { "fast" };
    let _ = as_owner(Command::new(bindir.join("pg_ctl")), owner)
        .arg("-D")
        .arg(data)
        .args(["-m", mode, "-w", "stop"])
        .output();
}

/// initdb, then the settings, pg_hba.conf and roles every cluster has.
fn init_data_dir(
    bindir: &Path,
    owner: Option<(u32, u32)>,
    data: &Path,
) -> Result<(), ClusterError> {
    let parent = data.parent().unwrap_or(data);
    let pwfile = parent.join("pwfile");
    std::fs::write(&pwfile, PASSWORD)?;
    chown(&pwfile, owner)?;
    let init = run(
        as_owner(Command::new(bindir.join("initdb")), owner)
            .arg("-D")
            .arg(data)
            .args(["-U", roles::SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-sync"),
        "initdb",
    );
    let _ = std::fs::remove_file(&pwfile);
    init?;
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str(SETTINGS);
    std::fs::write(&conf, text)?;
    std::fs::write(data.join("pg_hba.conf"), HBA)?;
    chown(&conf, owner)?;
    chown(&data.join("pg_hba.conf"), owner)?;

    // Start once on the socket only, to create the roles.
    let port = free_port()?;
    pg_ctl_start(bindir, owner, parent, port)?;
    let sql = ROLES_SQL.replace("{PASSWORD}", PASSWORD);
    let created = run(
        Command::new(psql_path(bindir))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(parent)
            .args(["-p", &port.to_string(), "-U", roles::SUPERUSER, "-d", "postgres"])
            .args(["-c", &sql]),
        "creating roles",
    );
    pg_ctl_stop(bindir, owner, data, false);
    created.map(|_| ())
}

/// The cached initialised data directory under `template`, made if missing.
/// Concurrent callers may each build one; the first rename wins, which keeps this
/// safe across test processes without a lock.
fn ensure_template(
    bindir: &Path,
    owner: Option<(u32, u32)>,
    template: &Path,
) -> Result<PathBuf, ClusterError> {
    let version = run(Command::new(bindir.join("initdb")).arg("--version"), "initdb --version")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let tag: String = version.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
    // A change to the settings, pg_hba.conf or roles makes a new template.
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(HBA, SETTINGS, ROLES_SQL), &mut h);
    let cached = template.join(format!("pgdata-{tag}-{:016x}", std::hash::Hasher::finish(&h)));
    if cached.join("PG_VERSION").exists() {
        return Ok(cached);
    }
    std::fs::create_dir_all(template)?;
    let work = tempfile::Builder::new().prefix("build-").tempdir_in(template)?;
    chown(work.path(), owner)?;
    let data = work.path().join("data");
    init_data_dir(bindir, owner, &data)?;
    // Rename fails if another process won the race; theirs is as good.
    let _ = std::fs::rename(&data, &cached);
    Ok(cached)
}

/// Finds the directory holding initdb, pg_ctl and postgres.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("PGWARDEN_PG_BINDIR") {
        let d = PathBuf::from(d);
        return if has_server(&d) { Ok(d) } else { Err(ClusterError::NoBinaries) };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&d) {
            return Ok(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_server(d)) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_server(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d).ok_or(ClusterError::NoBinaries)
}

/// psql: beside the server binaries on Debian, otherwise on PATH.
fn psql_path(bindir: &Path) -> PathBuf {
    let beside = bindir.join("psql");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("psql")
    }
}

/// The (uid, gid) to run the server as: `postgres` when we are root, else us.
fn server_owner() -> Result<Option<(u32, u32)>, ClusterError> {
    let me = run(Command::new("id").arg("-u"), "id -u")?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.first() == Some(&"postgres") {
                Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
            } else {
                None
            }
        })
        .map(Some)
        .ok_or_else(|| {
            ClusterError::NoPostgresUser(
                "create it (`useradd --system postgres`) or run as a non-root user".into(),
            )
        })
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), ClusterError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command, what: &str) -> Result<Output, ClusterError> {
    let out = cmd.output().map_err(|e| ClusterError::Command {
        what: what.to_string(),
        detail: format!("could not run {:?}: {e}", cmd.get_program()),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            what: what.to_string(),
            detail: format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}
