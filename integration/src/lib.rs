//! pgwarden's end-to-end test harness: a throwaway Postgres cluster per test, a
//! pgwarden proxy in front of it (in-process, or as the real binary), and helpers
//! to reach both with real clients so that every result through the proxy can be
//! compared with the same operation made directly.
//!
//! # Layout
//! - [`TestEnv`]: cluster + in-process proxy; dropped at the end of a test (even a
//!   failing one), which stops Postgres and removes its files.
//! - [`ProxyProcess`]: the `pgwarden` binary as a child process, for signals.
//! - [`python`]: the virtualenv interpreter with psycopg 3, for Python clients.
//! - [`certs`]: a CA and the certificates it signs, made at test time.
//! - [`encrypted`]: a cluster and a configuration with encrypted columns.
//!
//! Every test gets its own cluster on free ports, so tests run in parallel. The
//! initialised data directory is cached under `target/` and copied per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a harness that cannot set up should fail the test loudly"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub mod certs;
pub mod encrypted;
pub mod wire;

pub use pgwarden::cluster::{roles, Cluster, PASSWORD};
use pgwarden::{Proxy, ProxyHandle};
use pgwarden_config::Config;
use tokio_util::sync::CancellationToken;

/// Where the initialised data directory is cached between tests.
pub fn template_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/pg-template")
}

/// Starts a throwaway cluster, panicking with the harness' message (for example
/// how to install Postgres) if it cannot.
pub fn start_cluster() -> Cluster {
    match Cluster::start(Some(&template_dir())) {
        Ok(c) => c,
        Err(e) => panic!("cannot start a throwaway Postgres: {e}"),
    }
}

/// The TOML of a pass-through proxy on a free port in front of `pg`, with its
/// admin endpoints on another free port.
pub fn base_config_toml(pg: &Cluster) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [metrics]\naddress = \"127.0.0.1:0\"\n",
        pg.port()
    )
}

/// A throwaway Postgres with a pgwarden proxy in front of it, in this process.
pub struct TestEnv {
    pub pg: Cluster,
    pub proxy_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`; `None` if a test turned them off.
    pub admin_addr: Option<SocketAddr>,
    pub handle: ProxyHandle,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestEnv {
    /// Cluster + proxy with the default pass-through configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Cluster + proxy, with `tweak` applied to the configuration first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let pg = tokio::task::spawn_blocking(start_cluster).await.unwrap();
        let mut config = pgwarden_config::load_str(&base_config_toml(&pg), std::iter::empty())
            .expect("base test config is valid");
        tweak(&mut config);
        Self::start_on(pg, config).await
    }

    /// A proxy with `config` in front of `pg`, which the caller prepared
    /// (tables, keys).
    pub async fn start_on(pg: Cluster, config: Config) -> Self {
        let problems = config.validate();
        assert!(problems.is_empty(), "test config invalid: {problems:?}");
        let proxy = Proxy::bind(Arc::new(config)).await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let admin_addr = proxy.admin_addr();
        let handle = proxy.handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proxy.run(shutdown.clone()));
        Self { pg, proxy_addr, admin_addr, handle, shutdown, task: Some(task) }
    }

    /// `GET path` on the admin endpoints: the status code and the body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr.expect("admin endpoints are off"), path).await
    }

    /// Starts a graceful shutdown without waiting for it (see
    /// [`TestEnv::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A libpq-style connection string through the proxy.
    pub fn proxy_url(&self, user: &str, database: &str) -> String {
        url(self.proxy_addr.port(), user, database)
    }

    /// The same, directly to Postgres.
    pub fn direct_url(&self, user: &str, database: &str) -> String {
        url(self.pg.port(), user, database)
    }

    /// A tokio-postgres client through the proxy, as the SCRAM superuser.
    pub async fn proxy_client(&self) -> tokio_postgres::Client {
        connect(&self.proxy_url(roles::SCRAM, "postgres")).await
    }

    /// A tokio-postgres client directly to Postgres, as the SCRAM superuser.
    pub async fn direct_client(&self) -> tokio_postgres::Client {
        connect(&self.direct_url(roles::SCRAM, "postgres")).await
    }

    /// Requests graceful shutdown and waits for the proxy to finish it.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(t) => t.await.expect("proxy task panicked"),
            None => Ok(()),
        }
    }

    /// Waits until the proxy serves no connection (or `limit` passes), and
    /// returns how many remain: sessions must not outlive their sockets.
    pub async fn wait_for_no_connections(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        while self.handle.active_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.handle.active_connections()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A plain HTTP/1.1 `GET`: the status code and the body. Enough for the admin
/// endpoints, without an HTTP client library.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no complete answer in 10s"))
        .unwrap();
    let text = String::from_utf8(raw).expect("the admin server answers UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

/// The payload of a chunked HTTP/1.1 body (as Prometheus' API sends).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn url(port: u16, user: &str, database: &str) -> String {
    format!("postgresql://{user}:{PASSWORD}@127.0.0.1:{port}/{database}?sslmode=disable")
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    try_connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e:?}"))
}

/// Everything a COPY ... TO STDOUT sends (tokio-postgres prepares it: the
/// extended protocol).
pub async fn copy_out(c: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    use futures_util::TryStreamExt;
    let stream = c.copy_out(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    stream
        .try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The error a connection attempt that must fail gets.
pub async fn connect_err(url: &str) -> tokio_postgres::Error {
    match try_connect(url).await {
        Ok(_) => panic!("connecting to {url} succeeded, but must fail"),
        Err(e) => e,
    }
}

pub async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The `pgwarden` binary of this build, next to the test executables
/// (`scripts/test` builds it before running the tests).
pub fn pgwarden_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("pgwarden");
    assert!(
        bin.is_file(),
        "{} not found: run the tests with scripts/test, or build it first with \
         `cargo build -p pgwarden`",
        bin.display()
    );
    bin
}

/// The `pgwarden` binary running as a child process with a config file.
pub struct ProxyProcess {
    pub child: Child,
    pub port: u16,
    /// Holds the config file.
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `pgwarden run --config` with `toml` (whose `listen.address` must
    /// use `port`) and waits until it accepts connections.
    pub fn start(toml: &str, port: u16) -> Self {
        Self::start_logging(toml, port, &[], "warn")
    }

    /// The same, with extra arguments, `PGWARDEN_LOG=level`, and stderr going
    /// to [`ProxyProcess::log`].
    pub fn start_logging(toml: &str, port: u16, args: &[&str], level: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgwarden.toml");
        std::fs::write(&path, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(pgwarden_binary())
            .args(args)
            .args(["run", "--config"])
            .arg(&path)
            .env("PGWARDEN_LOG", level)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = Self { child, port, _dir: dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("pgwarden exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = p.child.kill();
        panic!("pgwarden did not start listening on port {port}");
    }

    /// The configuration file it runs with (rewrite it and send HUP to reload).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("pgwarden.toml")
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod python {
    //! Python clients: an interpreter with psycopg 3.
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The interpreter to run Python client tests with: `$PGWARDEN_PYTHON`, or
    /// the project's `.venv` that `scripts/test` creates. Panics with how to set
    /// it up when psycopg is not importable.
    pub fn interpreter() -> PathBuf {
        let python = std::env::var_os("PGWARDEN_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
        let ok = Command::new(&python)
            .args(["-c", "import psycopg"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{} cannot import psycopg. Run the tests with `scripts/test`, which creates \
             .venv with psycopg 3, or: python3 -m venv .venv && .venv/bin/pip install \
             'psycopg[binary]'  (or point PGWARDEN_PYTHON at an interpreter that has it)",
            python.display()
        );
        python
    }

    /// Path of a script in `integration/python/`.
    pub fn script(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
    }
}
