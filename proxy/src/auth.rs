//! Authentication, relayed: Postgres authenticates the client, the proxy carries
//! the messages (trust, cleartext, md5, SCRAM-SHA-256) unchanged, except that it
//! withdraws SCRAM-SHA-256-PLUS and swaps Postgres' BackendKeyData for its own.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::cancel::{CancelMap, Registration, UpstreamKey};
use crate::error::ClientError;
use crate::protocol::{self, Fill, Framer, Message};
use crate::session::End;

/// Authentication request codes after which Postgres waits for the client.
fn expects_client_response(code: u32) -> bool {
    // 3 cleartext, 5 md5, 7 GSS, 8 GSS continue, 9 SSPI, 10 SASL, 11 SASL continue.
    matches!(code, 3 | 5 | 7 | 8 | 9 | 10 | 11)
}

/// The two sides, as the relay sees them.
pub struct Sides<'a, CR, CW, UR, UW> {
    pub client_rd: &'a mut CR,
    pub client_wr: &'a mut CW,
    pub client: &'a mut Framer,
    pub upstream_rd: &'a mut UR,
    pub upstream_wr: &'a mut UW,
    pub upstream: &'a mut Framer,
}

/// A login Postgres admitted.
pub struct Admitted {
    /// The proxy's cancel key for the client, registered in the cancel map.
    pub registration: Registration,
    /// Whether Postgres asked the client for anything (a password, md5,
    /// SCRAM...). A login that was not asked can be given a kept connection.
    pub challenged: bool,
    /// Postgres' ParameterStatus messages, whole (only with `keep_params`).
    pub params: Vec<bytes::Bytes>,
    /// Postgres' NegotiateProtocolVersion, whole, if it sent one (only with
    /// `keep_params`): the protocol version and options it declined.
    pub negotiated: Option<bytes::Bytes>,
}

/// Relays authentication through to the first ReadyForQuery. On success the
/// client holds the proxy's cancel key, registered in `cancels`.
///
/// Not cancel safe; runs under the handshake timeout, which ends the connection.
pub async fn relay<CR, CW, UR, UW>(
    s: Sides<'_, CR, CW, UR, UW>,
    cancels: &CancelMap,
    upstream_addr: SocketAddr,
    upstream_tls: Option<&crate::upstream::tls::UpstreamTlsSetup>,
    keep_params: bool,
) -> Result<Admitted, End>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let mut registration = None;
    let mut challenged = false;
    let mut params = vec![];
    let mut negotiated = None;
    loop {
        let msg = next(s.upstream, s.upstream_rd, true).await?;
        match msg.tag {
            b'R' => {
                let code = msg.body().get(..4).map(|mut b| b.get_u32()).unwrap_or(u32::MAX);
                if code == 10 {
                    let Some(stripped) = protocol::strip_scram_plus(msg.body()) else {
                        return Err(End::Upstream(ClientError::upstream_protocol_violation()));
                    };
                    out.extend_from_slice(&stripped);
                } else {
                    out.extend_from_slice(&msg.frame);
                }
                if expects_client_response(code) {
                    challenged = true;
                    flush(s.client_wr, &mut out).await?;
                    let reply = next(s.client, s.client_rd, false).await?;
                    match reply.tag {
                        b'p' => {}
                        b'X' => return Err(End::ClientTerminated),
                        t => {
                            return Err(End::Client(ClientError::protocol_violation(format!(
                                "expected an authentication response, got message type {:?}",
                                char::from(t)
                            ))))
                        }
                    }
                    s.upstream_wr.write_all(&reply.frame).await.map_err(|_| End::UpstreamGone)?;
                }
            }
            b'K' => {
                let mut body = msg.body();
                if body.len() < 8 {
                    return Err(End::Upstream(ClientError::upstream_protocol_violation()));
                }
                let pid = body.get_i32();
                let key = UpstreamKey {
                    addr: upstream_addr,
                    pid,
                    secret: body.to_vec(),
                    tls: upstream_tls.cloned(),
                };
                let (our_pid, our_secret, reg) = cancels.register(key);
                out.extend_from_slice(&protocol::backend_key_data(our_pid, our_secret));
                registration = Some(reg);
            }
            b'E' => {
                out.extend_from_slice(&msg.frame);
                flush(s.client_wr, &mut out).await?;
                // 28P01 invalid_password: what the lockout counts.
                let password = msg.body().windows(6).any(|w| w == b"C28P01");
                return Err(End::AuthFailed { password });
            }
            b'Z' => {
                out.extend_from_slice(&msg.frame);
                flush(s.client_wr, &mut out).await?;
                let registration = registration
                    .ok_or(End::Upstream(ClientError::upstream_protocol_violation()))?;
                return Ok(Admitted { registration, challenged, params, negotiated });
            }
            b'S' => {
                if keep_params {
                    params.push(bytes::Bytes::copy_from_slice(&msg.frame));
                }
                out.extend_from_slice(&msg.frame);
            }
            b'v' => {
                if keep_params {
                    negotiated = Some(bytes::Bytes::copy_from_slice(&msg.frame));
                }
                out.extend_from_slice(&msg.frame);
            }
            // NoticeResponse, ...
            _ => out.extend_from_slice(&msg.frame),
        }
    }
}

/// The next whole message from one side.
async fn next<R: AsyncRead + Unpin>(
    framer: &mut Framer,
    rd: &mut R,
    from_upstream: bool,
) -> Result<Message, End> {
    let gone = if from_upstream { End::UpstreamGone } else { End::ClientGone };
    match framer.fill(rd).await {
        Err(_) | Ok(Ok(Fill::Eof { .. })) => return Err(gone),
        Ok(Err(e)) => return Err(End::framing(e, from_upstream)),
        Ok(Ok(Fill::Ready)) => {}
    }
    match framer.next_message() {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(gone),
        Err(e) => Err(End::framing(e, from_upstream)),
    }
}

async fn flush<W: AsyncWrite + Unpin>(w: &mut W, out: &mut BytesMut) -> Result<(), End> {
    if !out.is_empty() {
        w.write_all(out).await.map_err(|_| End::ClientGone)?;
        out.clear();
    }
    Ok(())
}
