//! Connections to Postgres.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cancel::UpstreamKey;
use crate::protocol;

/// Where and how to reach Postgres.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
}

impl UpstreamTarget {
    pub fn from_config(c: &pgwarden_config::Upstream) -> Self {
        Self { host: c.host.clone(), port: c.port, connect_timeout: c.connect_timeout.get() }
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

/// Sends a CancelRequest for `key` on a connection of its own, as Postgres
/// requires, and waits for Postgres to close it.
pub async fn send_cancel(key: &UpstreamKey, timeout: Duration) -> std::io::Result<()> {
    let work = async {
        let mut s = TcpStream::connect(key.addr).await?;
        s.write_all(&protocol::cancel_request(key.pid, &key.secret)).await?;
        s.shutdown().await?;
        // Postgres answers nothing and closes; wait for that so the cancel has
        // been read before we return.
        let mut sink = [0u8; 16];
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
        Ok(())
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel timed out"))
    })
}
