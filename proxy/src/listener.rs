//! Accepting clients: the connection cap, graceful shutdown, and the admin
//! HTTP server beside them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use pgwarden_config::{AdminListen, Config};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminServer;
use crate::cancel::CancelMap;
use crate::error::ClientError;
use crate::handshake::{self, Opening};
use crate::metrics::{ConnectionOutcome, Denial, Metrics};
use crate::policy::{Lockouts, RateLimits, UserSlots};
use crate::session;
use crate::upstream::UpstreamTarget;

/// Time a client over the connection cap has to send its startup packet before
/// it is told 53300; short, since such connections are not counted by the cap.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What every session of one proxy shares.
pub struct Shared {
    /// Swapped whole on reload (SIGHUP); a session reads it once, at its start.
    pub config: ArcSwap<Config>,
    pub cancels: CancelMap,
    pub upstream: UpstreamTarget,
    /// This proxy's metrics, exported by the admin server.
    pub metrics: Metrics,
    /// Sessions per login role, for `limits.max_connections_per_user`.
    pub user_slots: UserSlots,
    /// Failed logins per (role, address), for the lockout.
    pub lockouts: Lockouts,
    /// Statement rate per role, for `limits.queries_per_second_per_user`.
    pub rate_limits: RateLimits,
    /// TLS toward clients; empty when `listen.tls_cert` is not set. Rebuilt
    /// from the files on every reload, so rotated certificates take effect
    /// for new connections without dropping any.
    pub tls: ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// Keys, registered columns and their catalog; `None` without
    /// `[[columns]]`.
    pub encryption: Option<Arc<crate::pipeline::Encryption>>,
    /// The audit log; `None` when `[audit] sinks` is empty.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// Server connections kept for later clients; `None` when
    /// `upstream.reuse_idle` is 0.
    pub reuse: Option<crate::upstream::reuse::Reuse>,
}

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    /// `/metrics`, `/healthz`, `/readyz`; `None` when `metrics.address` is off
    /// (or its default port was taken).
    admin: Option<AdminServer>,
}

/// A view of a running proxy, for tests and the admin endpoints.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl ProxyHandle {
    /// Connections being served (handshaking or in session).
    pub fn active_connections(&self) -> usize {
        self.tracker.len()
    }

    /// Server connections kept for later clients (`upstream.reuse_idle`).
    pub fn kept_connections(&self) -> usize {
        self.shared.reuse.as_ref().map_or(0, |r| r.len())
    }

    /// Sessions holding a cancel key.
    pub fn registered_cancel_keys(&self) -> usize {
        self.shared.cancels.len()
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The configuration sessions start with now.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// Puts a new, validated configuration in force for sessions that start
    /// from now on. Settings that need a restart keep their running values and
    /// are named in the answer. A configuration this proxy cannot honour is
    /// refused whole, and the running one stays.
    pub fn reload(&self, mut new: Config) -> Result<Vec<&'static str>, Vec<String>> {
        let problems = new.validate();
        if !problems.is_empty() {
            if let Some(audit) = &self.shared.audit {
                let r = crate::audit::Record::new(crate::audit::Event::ConfigReload, None, "error");
                audit.record_detached(r.reason("invalid_config"));
            }
            return Err(problems);
        }
        let old = self.shared.config.load_full();
        let mut restart = Vec::new();
        macro_rules! keep {
            ($($path:ident).+, $key:literal) => {
                if new.$($path).+ != old.$($path).+ {
                    restart.push($key);
                    new.$($path).+ = old.$($path).+.clone();
                }
            };
        }
        keep!(listen.address, "listen.address");
        keep!(listen.max_connections, "listen.max_connections");
        keep!(listen.worker_threads, "listen.worker_threads");
        keep!(upstream.host, "upstream.host");
        keep!(upstream.port, "upstream.port");
        keep!(upstream.tls, "upstream.tls");
        keep!(upstream.ca, "upstream.ca");
        keep!(upstream.connect_timeout, "upstream.connect_timeout");
        keep!(upstream.reuse_idle, "upstream.reuse_idle");
        keep!(upstream.reuse_idle_timeout, "upstream.reuse_idle_timeout");
        keep!(upstream.reuse_lifetime, "upstream.reuse_lifetime");
        keep!(metrics.address, "metrics.address");
        keep!(columns, "columns");
        keep!(keys, "keys");
        keep!(upstream.admin_user, "upstream.admin_user");
        keep!(upstream.admin_password, "upstream.admin_password");
        keep!(upstream.admin_database, "upstream.admin_database");
        keep!(audit.sinks, "audit.sinks");
        keep!(audit.file, "audit.file");
        keep!(audit.rotate_bytes, "audit.rotate_bytes");
        keep!(audit.fsync_interval, "audit.fsync_interval");
        keep!(audit.key, "audit.key");
        keep!(audit.on_overflow, "audit.on_overflow");
        keep!(audit.queue_capacity, "audit.queue_capacity");
        keep!(audit.partitions_ahead, "audit.partitions_ahead");
        let tls = crate::tls::acceptor(&new.listen).map_err(|e| vec![e])?;
        self.shared.tls.store(tls.map(Arc::new));
        if let Some(enc) = &self.shared.encryption {
            enc.access.store(Arc::new(crate::access::AccessPolicy::new(&new)));
        }
        self.shared.rate_limits.set_rate(new.limits.queries_per_second_per_user);
        if let Some(audit) = &self.shared.audit {
            audit.reload(&new);
            let outcome = if restart.is_empty() { "ok" } else { "partial" };
            let mut r = crate::audit::Record::new(crate::audit::Event::ConfigReload, None, outcome);
            if !restart.is_empty() {
                r = r.reason("needs_restart");
            }
            audit.record_detached(r);
        }
        self.shared.config.store(Arc::new(new));
        Ok(restart)
    }
}

impl ProxyHandle {
    /// Waits until the audit records queued so far are written; nothing to
    /// do with the audit log off.
    pub async fn flush_audit(&self) {
        if let Some(audit) = &self.shared.audit {
            audit.flush().await;
        }
    }

    /// Reads the data keys again from the database (new versions, status
    /// changes), for sessions and statements from now on. Nothing to do
    /// without registered columns.
    pub async fn reload_keys(&self) -> Result<(), String> {
        match &self.shared.encryption {
            Some(enc) => {
                enc.reload_keys(&self.shared.config.load()).await.map_err(|e| e.to_string())
            }
            None => Ok(()),
        }
    }
}

impl Proxy {
    /// Binds `listen.address` and `metrics.address`. The config must have
    /// passed validation.
    pub async fn bind(config: Arc<Config>) -> std::io::Result<Self> {
        // Fail closed: without its keys and columns the proxy does not start.
        let metrics = Metrics::new().map_err(std::io::Error::other)?;
        let encryption = crate::pipeline::Encryption::load(&config)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map(|mut e| {
                e.metrics = metrics.columns(config.columns.iter().map(|c| c.name.as_str()));
                Arc::new(e)
            });
        let addr = config.listen_addr().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "listen.address is invalid")
        })?;
        let listener = TcpListener::bind(addr).await?;
        let admin = bind_admin(&config).await?;
        let audit =
            crate::audit::Auditor::start(&config, &metrics).await.map_err(std::io::Error::other)?;
        let tls = crate::tls::acceptor(&config.listen).map_err(std::io::Error::other)?;
        let upstream = UpstreamTarget::from_config(&config.upstream)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Shared {
            reuse: crate::upstream::reuse::Reuse::new(&config.upstream),
            upstream,
            rate_limits: RateLimits::new(config.limits.queries_per_second_per_user),
            config: ArcSwap::new(config),
            cancels: CancelMap::default(),
            metrics,
            user_slots: UserSlots::default(),
            lockouts: Lockouts::default(),
            tls: ArcSwapOption::new(tls.map(Arc::new)),
            encryption,
            audit,
        });
        Ok(Self { listener, shared, tracker: TaskTracker::new(), admin })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound address of the admin endpoints, if they are on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle { shared: self.shared.clone(), tracker: self.tracker.clone() }
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and waits for
    /// sessions to drain (each has `listen.shutdown_grace` to finish its
    /// statement before it is closed with 57P01). The admin endpoints serve
    /// until the sessions are gone, `/readyz` answering 503 meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let config = self.shared.config.load_full();
        let listen = &config.listen;
        let max = listen.max_connections as usize;
        let slots = Arc::new(Semaphore::new(max));
        // Connections over the cap are answered 53300; this bounds how many such
        // answers are in flight, beyond which connections are simply closed.
        let refusals = Arc::new(Semaphore::new(max.clamp(16, 1024)));
        tracing::info!(address = %self.local_addr()?, "pgwarden listening");
        let admin_stop = CancellationToken::new();
        let admin = self.admin.map(|server| {
            tokio::spawn(server.serve(self.shared.clone(), shutdown.clone(), admin_stop.clone()))
        });
        let sweeper = self.shared.reuse.is_some().then(|| {
            let shared = self.shared.clone();
            let stop = admin_stop.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = stop.cancelled() => break,
                    }
                    if let Some(reuse) = &shared.reuse {
                        reuse.sweep().await;
                    }
                }
            })
        });
        loop {
            let (socket, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                let shared = self.shared.clone();
                let shutdown = shutdown.clone();
                let active = shared.metrics.connection_opened();
                self.tracker.spawn(async move {
                    session::serve(socket, peer, shared, shutdown).await;
                    drop(active);
                    drop(slot);
                });
            } else if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tracing::warn!(%peer, "connection refused: listen.max_connections reached");
                let shared = self.shared.clone();
                self.tracker.spawn(async move {
                    let outcome = refuse(socket, peer, &shared).await;
                    shared.metrics.connection_ended(outcome);
                    drop(permit);
                });
            } else {
                self.shared.metrics.connection_ended(ConnectionOutcome::RefusedCapacity);
            }
        }
        drop(self.listener);
        self.tracker.close();
        let grace = listen.shutdown_grace.get() + Duration::from_secs(5);
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(left = self.tracker.len(), "sessions still open after the grace period");
        }
        if let Some(reuse) = &self.shared.reuse {
            reuse.close_all().await;
        }
        if let Some(audit) = &self.shared.audit {
            // Everything the sessions recorded is queued before this.
            audit.close().await;
        }
        admin_stop.cancel();
        if let Some(task) = sweeper {
            let _ = task.await;
        }
        if let Some(task) = admin {
            let _ = task.await;
        }
        tracing::info!("pgwarden stopped");
        Ok(())
    }
}

/// Binds `metrics.address`: an address the file sets must bind; the default is
/// best effort, so that a second pgwarden on one host still starts.
async fn bind_admin(config: &Config) -> std::io::Result<Option<AdminServer>> {
    match config.metrics.listen() {
        AdminListen::Off => Ok(None),
        AdminListen::Configured(a) => AdminServer::bind(a)
            .await
            .map(Some)
            .map_err(|e| std::io::Error::new(e.kind(), format!("metrics.address {a}: {e}"))),
        AdminListen::Default(a) => match AdminServer::bind(a).await {
            Ok(server) => Ok(Some(server)),
            Err(e) => {
                tracing::warn!(
                    address = %a, error = %e,
                    "admin endpoints off: the default metrics.address is taken; \
                     set [metrics] address to choose another"
                );
                Ok(None)
            }
        },
    }
}

/// Answers a connection over the cap with 53300 once its startup packet arrives
/// (libpq reads errors only after sending it). A CancelRequest is still served:
/// a full proxy must still be able to cancel the statements filling it.
async fn refuse(mut socket: TcpStream, peer: SocketAddr, shared: &Shared) -> ConnectionOutcome {
    let (mut rd, mut wr) = socket.split();
    let opening = tokio::time::timeout(
        REFUSAL_TIMEOUT,
        handshake::read_opening(&mut rd, &mut wr, &shared.cancels, None),
    )
    .await;
    let outcome = match opening {
        Ok(Ok(Opening::Cancel)) => ConnectionOutcome::CancelRequest,
        Ok(Ok(Opening::Startup(startup))) => {
            let _ = wr.write_all(&ClientError::too_many_connections().to_message()).await;
            let id = format!("{:016x}", rand::random::<u64>());
            session::audit_refusal(shared, id, peer, Some(&startup), false, Denial::Capacity).await;
            ConnectionOutcome::RefusedCapacity
        }
        _ => {
            let id = format!("{:016x}", rand::random::<u64>());
            session::audit_refusal(shared, id, peer, None, false, Denial::Capacity).await;
            ConnectionOutcome::RefusedCapacity
        }
    };
    let _ = wr.shutdown().await;
    outcome
}
