//! Accepting clients: the connection cap, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_config::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelMap;
use crate::error::ClientError;
use crate::handshake::{self, Opening};
use crate::session;
use crate::upstream::UpstreamTarget;

/// Time a client over the connection cap has to send its startup packet before
/// it is told 53300; short, since such connections are not counted by the cap.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What every session of one proxy shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub cancels: CancelMap,
    pub upstream: UpstreamTarget,
}

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
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

    /// Sessions holding a cancel key.
    pub fn registered_cancel_keys(&self) -> usize {
        self.shared.cancels.len()
    }
}

impl Proxy {
    /// Binds `listen.address`. The config must have passed validation.
    pub async fn bind(config: Arc<Config>) -> std::io::Result<Self> {
        if !config.columns.is_empty() {
            // Fail closed: relaying plaintext for columns the operator registered
            // as encrypted would be worse than not starting.
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "[[columns]] are registered, but this version of pgwarden cannot encrypt \
                 yet; refusing to start rather than pass their values through in plaintext",
            ));
        }
        let addr = config.listen_addr().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "listen.address is invalid")
        })?;
        let listener = TcpListener::bind(addr).await?;
        let shared = Arc::new(Shared {
            upstream: UpstreamTarget::from_config(&config.upstream),
            config,
            cancels: CancelMap::default(),
        });
        Ok(Self { listener, shared, tracker: TaskTracker::new() })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle { shared: self.shared.clone(), tracker: self.tracker.clone() }
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and waits for
    /// sessions to drain (each has `listen.shutdown_grace` to finish its
    /// statement before it is closed with 57P01).
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let listen = &self.shared.config.listen;
        let max = listen.max_connections as usize;
        let slots = Arc::new(Semaphore::new(max));
        // Connections over the cap are answered 53300; this bounds how many such
        // answers are in flight, beyond which connections are simply closed.
        let refusals = Arc::new(Semaphore::new(max.clamp(16, 1024)));
        tracing::info!(address = %self.local_addr()?, "pgwarden listening");
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
                self.tracker.spawn(async move {
                    session::serve(socket, peer, shared, shutdown).await;
                    drop(slot);
                });
            } else if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tracing::warn!(%peer, "connection refused: listen.max_connections reached");
                let cancels = self.shared.cancels.clone();
                self.tracker.spawn(async move {
                    refuse(socket, &cancels).await;
                    drop(permit);
                });
            }
        }
        drop(self.listener);
        self.tracker.close();
        let grace = listen.shutdown_grace.get() + Duration::from_secs(5);
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(left = self.tracker.len(), "sessions still open after the grace period");
        }
        tracing::info!("pgwarden stopped");
        Ok(())
    }
}

/// Answers a connection over the cap with 53300 once its startup packet arrives
/// (libpq reads errors only after sending it). A CancelRequest is still served:
/// a full proxy must still be able to cancel the statements filling it.
async fn refuse(mut socket: TcpStream, cancels: &CancelMap) {
    let (mut rd, mut wr) = socket.split();
    let opening =
        tokio::time::timeout(REFUSAL_TIMEOUT, handshake::read_opening(&mut rd, &mut wr, cancels))
            .await;
    if let Ok(Ok(Opening::Startup(_))) = opening {
        let _ = wr.write_all(&ClientError::too_many_connections().to_message()).await;
    }
    let _ = wr.shutdown().await;
}
