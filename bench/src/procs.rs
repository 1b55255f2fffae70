//! Processes and files the runner owns, each behind a guard that cleans up on
//! drop, so an error or an interrupt anywhere still leaves nothing running and
//! nothing on disk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// A uid and gid to run a child as.
pub type Owner = (u32, u32);

/// A private directory for config files and logs, removed on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/pgwarden-bench-<pid>-<nanos>`, mode 0700, owned by
    /// `owner` when given (PgBouncer, run as `postgres`, must read its files).
    pub fn create(owner: Option<Owner>) -> Result<Self> {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("pgwarden-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating scratch directory {}", path.display()))?;
        let dir = Self { path };
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))?;
        chown(&dir.path, owner)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory, owned by `owner`; returns its path.
    pub fn write(&self, name: &str, text: &str, owner: Option<Owner>) -> Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        chown(&path, owner)?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn chown(path: &Path, owner: Option<Owner>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Whether this process runs as root (uid 0).
pub fn running_as_root() -> Result<bool> {
    Ok(std::fs::metadata("/proc/self").context("reading /proc/self")?.uid() == 0)
}

/// The uid and gid of OS user `name`, from /etc/passwd.
pub fn os_user(name: &str) -> Result<Owner> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.first() == Some(&name) {
                Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
            } else {
                None
            }
        })
        .with_context(|| format!("OS user `{name}` not found in /etc/passwd"))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    pgwarden::cluster::free_port().context("finding a free port on 127.0.0.1")
}

/// A long-running child (PgBouncer, pgwarden) with its output in a log file;
/// stopped on drop.
pub struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name, child, log })
    }

    /// Waits until `addr` accepts TCP connections; fails, with the end of the
    /// log, if the process exits first or `timeout` passes.
    pub fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before accepting connections on {addr}; its log:\n{}",
                    self.name,
                    log_tail(&self.log, 30)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not accept connections on {addr} within {timeout:?}; its log:\n{}",
                    self.name,
                    log_tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it is still running after a few seconds.
    fn stop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`; whether it
    /// exited by itself (`false`: it had to be killed).
    fn terminate(&mut self, grace: Duration) -> bool {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Stops the process now and waits up to `grace` for a clean exit (status
    /// 0); an error, with the end of its log, otherwise.
    pub fn shut_down(mut self, grace: Duration) -> Result<()> {
        if !self.terminate(grace) {
            bail!(
                "{} did not exit within {grace:?} of SIGTERM and was killed; its log:\n{}",
                self.name,
                log_tail(&self.log, 30)
            );
        }
        match self.child.try_wait()? {
            Some(status) if status.success() => Ok(()),
            status => bail!(
                "{} exited with {status:?} after SIGTERM; its log:\n{}",
                self.name,
                log_tail(&self.log, 30)
            ),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs a command to completion and returns its stdout; a failure carries the
/// command's stderr.
pub fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Set once SIGINT or SIGTERM arrives; the runner stops between pgbench runs
/// and its guards clean up, instead of the default action killing the runner
/// and leaving Postgres, PgBouncer and pgwarden behind.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Installs SIGINT/SIGTERM handlers on a thread of their own. If that fails
    /// the signals keep their default action; the run itself still works.
    pub fn install() -> Self {
        let flag = Self::default();
        let set = flag.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(rt) = rt else { return flag };
        let handlers = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        });
        let Ok((mut int, mut term)) = handlers else {
            return flag;
        };
        std::thread::spawn(move || {
            rt.block_on(async {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    eprintln!("pgwarden-bench: interrupted; cleaning up");
                    set.0.store(true, Ordering::SeqCst);
                }
            })
        });
        flag
    }

    /// Fails once a signal has arrived.
    pub fn check(&self) -> Result<()> {
        if self.0.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// CPU time (user + system, all threads) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed /proc/PID/stat")?
            as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / ticks_per_second)
}

/// The kernel's clock tick rate for /proc times (`getconf CLK_TCK`; 100 if
/// that cannot be asked).
pub fn clock_ticks() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"), "getconf CLK_TCK")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}
