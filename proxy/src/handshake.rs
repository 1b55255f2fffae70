//! The first packets of a connection: SSLRequest and GSSENCRequest (declined for
//! now), CancelRequest (mapped to the upstream key and sent on), StartupMessage.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::cancel::{self, CancelMap};
use crate::error::ClientError;
use crate::protocol::{self, Startup, StartupPacket};
use crate::upstream;

/// How many SSLRequest/GSSENCRequest a client may send before its StartupMessage
/// (libpq sends at most one of each).
const MAX_NEGOTIATIONS: usize = 2;

/// What the first packets of a connection amounted to.
#[derive(Debug)]
pub enum Opening {
    /// A StartupMessage: a session begins.
    Startup(Startup),
    /// A CancelRequest, handled; the connection ends.
    Cancel,
    /// The client closed before sending a StartupMessage.
    Closed,
}

/// Reads packets until a StartupMessage or CancelRequest, answering 'N' to
/// SSLRequest and GSSENCRequest. `first` is a packet already read (the one
/// that decided against TLS).
///
/// Not cancel safe; runs under the handshake timeout, which ends the connection.
pub async fn read_opening<R, W>(
    rd: &mut R,
    wr: &mut W,
    cancels: &CancelMap,
    mut first: Option<StartupPacket>,
) -> Result<Opening, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    for _ in 0..=MAX_NEGOTIATIONS {
        let packet = match first.take() {
            Some(p) => p,
            None => match protocol::read_startup(rd).await? {
                Some(p) => p,
                None => return Ok(Opening::Closed),
            },
        };
        match packet {
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                wr.write_all(b"N").await.map_err(ClientError::io)?;
            }
            StartupPacket::Cancel { pid, secret } => {
                if let Some(forward) = cancels.lookup(pid, secret) {
                    match upstream::send_cancel(&forward.upstream, cancel::SEND_TIMEOUT).await {
                        Ok(()) => forward.delivered(),
                        Err(e) => tracing::warn!(error = %e, "could not forward a cancel request"),
                    }
                } else {
                    tracing::info!("cancel request with an unknown key ignored");
                }
                return Ok(Opening::Cancel);
            }
            StartupPacket::Startup(s) => return Ok(Opening::Startup(s)),
        }
    }
    Err(ClientError::protocol_violation(
        "too many SSLRequest/GSSENCRequest packets before the StartupMessage",
    ))
}
