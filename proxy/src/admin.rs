//! The admin HTTP server on `metrics.address`: `GET /metrics` (Prometheus text
//! format), `GET /healthz` (the process serves), `GET /readyz` (Postgres is
//! reachable, keys and audit sinks are usable, the proxy is not shutting
//! down).
//!
//! Small on purpose: HTTP/1.1 only, a handful of connections at once, a header
//! timeout, nothing read from request bodies. It is for Prometheus and the
//! orchestrator's probes, not for the public; bind it to a private address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::listener::Shared;

/// Admin connections served at once; more are closed on accept. Prometheus
/// and a kubelet need a few.
const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a readiness answer is reused, so that frequent probes from several
/// sources open at most one connection to Postgres per interval.
const READY_CACHE: Duration = Duration::from_secs(1);

/// Longest a readiness check waits for Postgres (less when
/// `upstream.connect_timeout` is shorter); probes time out at a few seconds.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoints read.
struct Admin {
    shared: Arc<Shared>,
    /// The proxy's shutdown token: once cancelled, `/readyz` answers 503 while
    /// sessions drain (the server itself stops after them).
    shutting_down: CancellationToken,
    /// The last upstream check: when, and its failure if it failed.
    ready: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// The admin server on its bound listener, until `stop` is cancelled.
pub struct AdminServer {
    listener: TcpListener,
}

impl AdminServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled, then closes every admin connection.
    /// Cancel safe: dropping it closes them too.
    pub async fn serve(
        self,
        shared: Arc<Shared>,
        shutting_down: CancellationToken,
        stop: CancellationToken,
    ) {
        let admin = Arc::new(Admin { shared, shutting_down, ready: Mutex::new(None) });
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(address = %addr, "admin endpoints listening: /metrics /healthz /readyz");
        }
        loop {
            let socket = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            while connections.try_join_next().is_some() {}
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // dropped: closed
            };
            let admin = admin.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
                drop(slot);
            });
        }
        connections.shutdown().await;
    }
}

impl Admin {
    async fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return text(StatusCode::NOT_FOUND, "not found; try /metrics, /healthz or /readyz\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match path {
            "/metrics" => {
                let metrics = &self.shared.metrics;
                metrics.lockouts_active.set(self.shared.lockouts.active() as i64);
                let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            _ => match self.readiness().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
        }
    }

    /// Ready: not shutting down, no audit sink failing, every registered
    /// column has an ACTIVE data key to write with (a key reload can take it
    /// away), and Postgres accepts
    /// a TCP connection (checked at most once per [`READY_CACHE`]; concurrent
    /// probes share one check). The reason names no address.
    async fn readiness(&self) -> Result<(), String> {
        if self.shutting_down.is_cancelled() {
            return Err("not ready: pgwarden is shutting down".into());
        }
        if let Some(sink) = self.shared.audit.as_ref().and_then(|a| a.failing_sink()) {
            return Err(format!(
                "not ready: the audit {sink} sink is failing; records wait in its queue"
            ));
        }
        if let Some(enc) = &self.shared.encryption {
            let keyring = enc.keyring.load();
            if let Some(c) = enc.registry.load().columns().find(|c| keyring.active(&c.key).is_err())
            {
                return Err(format!(
                    "not ready: column {} has no ACTIVE data key {} to write with",
                    c.name, c.key
                ));
            }
        }
        let mut cached = self.ready.lock().await;
        if let Some((at, result)) = cached.as_ref() {
            if at.elapsed() < READY_CACHE {
                return result.clone();
            }
        }
        let upstream = &self.shared.upstream;
        let limit = upstream.connect_timeout.min(READY_CONNECT_TIMEOUT);
        let result = match tokio::time::timeout(limit, upstream.connect()).await {
            // Closed at once without a byte: Postgres does not log such probes.
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(format!("not ready: Postgres is unreachable ({})", e.kind())),
            Err(_) => Err(format!("not ready: Postgres did not accept a connection in {limit:?}")),
        };
        *cached = Some((Instant::now(), result.clone()));
        result
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
