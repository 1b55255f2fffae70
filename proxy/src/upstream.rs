//! Connections to Postgres: TCP, then TLS as `upstream.tls` says ([`tls`]).

pub mod reuse;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pgwarden_config::UpstreamTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::cancel::UpstreamKey;
use crate::error::ClientError;
use crate::protocol;

/// Where and how to reach Postgres.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    /// `None` for `upstream.tls = "disable"`.
    pub tls: Option<tls::UpstreamTlsSetup>,
}

/// Why a session's connection to Postgres could not be opened. For the
/// operator's log: it may name the address, so the client gets
/// [`OpenError::client_error`] instead.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("upstream.tls: {0}")]
    Tls(String),
}

impl OpenError {
    /// What the client is told (08006, without the address).
    pub fn client_error(&self) -> ClientError {
        match self {
            OpenError::Io(_) => ClientError::upstream_unreachable(),
            OpenError::Tls(_) => ClientError::upstream_tls_failed(),
        }
    }
}

/// A connection to Postgres, plain or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamStream {
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Plain(s) => s.peer_addr(),
            Self::Tls(s) => s.get_ref().0.peer_addr(),
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Halves for the two loops. A plain connection splits without a lock,
    /// so the pass-through path costs what it did before TLS existed.
    pub fn into_split(self) -> (UpstreamRead, UpstreamWrite) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.into_split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            Self::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }
}

type TlsTcp = tokio_rustls::client::TlsStream<TcpStream>;

/// The reading half of an [`UpstreamStream`].
pub enum UpstreamRead {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsTcp>),
}

/// The writing half of an [`UpstreamStream`].
pub enum UpstreamWrite {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsTcp>),
}

impl AsyncRead for UpstreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Self::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Self::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_flush(cx),
            Self::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Self::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl UpstreamTarget {
    /// The target `c` describes; fails on an unusable `upstream.ca` or host.
    pub fn from_config(c: &pgwarden_config::Upstream) -> Result<Self, String> {
        Ok(Self {
            host: c.host.clone(),
            port: c.port,
            connect_timeout: c.connect_timeout.get(),
            tls: tls::setup(c)?,
        })
    }

    /// A session's connection: TCP, then SSLRequest and the TLS handshake
    /// unless `upstream.tls` is `disable`, all within `connect_timeout`.
    /// `prefer` goes on in plaintext only when Postgres answers 'N'; a failed
    /// handshake is an error in every mode.
    pub async fn open(&self) -> Result<UpstreamStream, OpenError> {
        let work = async {
            let tcp = self.connect().await?;
            let Some(setup) = &self.tls else { return Ok(UpstreamStream::Plain(tcp)) };
            negotiate(tcp, setup).await
        };
        tokio::time::timeout(self.connect_timeout, work).await.unwrap_or_else(|_| {
            Err(OpenError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
        })
    }

    /// Opens a TCP connection, trying each address the host resolves to, within
    /// `connect_timeout` in all. The error is for the operator's log only: it
    /// names the address, so it never reaches a client.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let attempt = async {
            let mut last = None;
            for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(s);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "host resolved to no address")
            }))
        };
        tokio::time::timeout(self.connect_timeout, attempt).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
        })
    }
}

/// SSLRequest on `tcp`, then TLS or (for `prefer` on 'N') plaintext.
async fn negotiate(
    mut tcp: TcpStream,
    setup: &tls::UpstreamTlsSetup,
) -> Result<UpstreamStream, OpenError> {
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&protocol::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await?;
    // One byte exactly: anything Postgres (or a man in the middle) sends
    // after it is read by rustls as TLS, never taken as protocol messages.
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => match setup.connector.connect(setup.name.clone(), tcp).await {
            Ok(s) => Ok(UpstreamStream::Tls(Box::new(s))),
            Err(e) => Err(OpenError::Tls(format!("TLS handshake with Postgres failed: {e}"))),
        },
        b'N' if setup.mode == UpstreamTls::Prefer => Ok(UpstreamStream::Plain(tcp)),
        b'N' => {
            Err(OpenError::Tls("Postgres does not accept TLS (answered N to SSLRequest)".into()))
        }
        other => Err(OpenError::Tls(format!("unexpected answer {other:#04x} to SSLRequest"))),
    }
}

/// Sends a CancelRequest for `key` on a connection of its own, as Postgres
/// requires, and waits for Postgres to close it. A key of a session that
/// reached Postgres over TLS is sent over TLS (SSLRequest first, as libpq 17
/// does); if Postgres then declines TLS, nothing is sent.
pub async fn send_cancel(key: &UpstreamKey, timeout: Duration) -> std::io::Result<()> {
    let work = async {
        let tcp = TcpStream::connect(key.addr).await?;
        let request = protocol::cancel_request(key.pid, &key.secret);
        match &key.tls {
            None => deliver(tcp, &request).await,
            Some(setup) => match negotiate(tcp, setup).await.map_err(io::Error::other)? {
                UpstreamStream::Tls(tls) => deliver(*tls, &request).await,
                UpstreamStream::Plain(_) => Err(io::Error::other(
                    "Postgres declined TLS for a cancel request of a TLS session; not sent",
                )),
            },
        }
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel timed out"))
    })
}

/// Writes `request` and waits for Postgres to close the connection (it
/// answers a CancelRequest with nothing), so that it has been read.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> io::Result<()> {
    s.write_all(request).await?;
    s.flush().await?;
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink).await;
    Ok(())
}
