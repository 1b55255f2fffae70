//! The Postgres wire protocol, as much of it as the proxy must understand: framing,
//! the startup packet, and the few messages it builds itself.
//!
//! Every length read from the wire is checked against a limit before anything is
//! allocated, and nothing here indexes unchecked input: a hostile peer gets an
//! error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ClientError;

pub mod messages;

/// Protocol 3.0 as a startup-packet version code.
pub const PROTOCOL_3: u32 = 196_608;
/// SSLRequest (F): the version code that asks for TLS.
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest (F): the version code that asks for GSSAPI encryption.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest (F): the version code of a cancel packet.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Postgres' own ceiling on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Ceiling on a message from Postgres. Postgres cannot build a larger one (its
/// allocations stop at 1 GiB); the slack covers the header and field lengths.
pub const MAX_BACKEND_MESSAGE: usize = (1 << 30) + (1 << 20);

/// Bytes the framer asks the socket for at least once per read.
const READ_CHUNK: usize = 16 * 1024;
/// Most the framer reserves at once for a message still arriving, so that a
/// claimed length (already under the limit) turns into memory only as its bytes
/// arrive.
const GROW_CHUNK: usize = 1 << 20;

/// Message type bytes a client may send after startup. Anything else is garbage.
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C'
            | b'd'
            | b'c'
            | b'D'
            | b'E'
            | b'F'
            | b'f'
            | b'H'
            | b'P'
            | b'p'
            | b'Q'
            | b'S'
            | b'X'
    )
}

/// The first packet of a connection.
#[derive(Debug)]
pub enum StartupPacket {
    /// SSLRequest (F).
    Ssl,
    /// GSSENCRequest (F).
    GssEnc,
    /// CancelRequest (F): the key the client was given in BackendKeyData.
    Cancel { pid: i32, secret: i32 },
    /// StartupMessage (F), kept whole so that it is forwarded byte for byte.
    Startup(Startup),
}

/// StartupMessage (F).
#[derive(Debug, Clone)]
pub struct Startup {
    /// Protocol version requested (major << 16 | minor).
    pub version: u32,
    /// Parameters in the order sent: user, database, application_name, options...
    pub params: Vec<(String, String)>,
    /// The whole packet, length included, as received.
    pub raw: Bytes,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The login role: the `user` parameter, which Postgres requires.
    pub fn user(&self) -> &str {
        self.param("user").unwrap_or_default()
    }

    /// The database: `database`, defaulting to the user name as Postgres does.
    pub fn database(&self) -> &str {
        self.param("database").unwrap_or_else(|| self.user())
    }
}

/// Reads the first packet of a connection (or the next one, after SSLRequest or
/// GSSENCRequest was answered). `Ok(None)` when the client closed first.
///
/// Not cancel safe: used only under a timeout that ends the connection.
pub async fn read_startup<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<StartupPacket>, ClientError> {
    let mut len_bytes = [0u8; 4];
    match r.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ClientError::io(e)),
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(ClientError::protocol_violation(format!(
            "invalid startup packet length {len} (must be 8..={MAX_STARTUP_PACKET})"
        )));
    }
    let mut raw = BytesMut::with_capacity(len);
    raw.put_slice(&len_bytes);
    raw.resize(len, 0);
    r.read_exact(&mut raw[4..]).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ClientError::protocol_violation("incomplete startup packet")
        } else {
            ClientError::io(e)
        }
    })?;
    parse_startup(raw.freeze()).map(Some).map_err(ClientError::protocol_violation)
}

/// Decodes a startup packet whose length prefix has been checked.
pub fn parse_startup(raw: Bytes) -> Result<StartupPacket, String> {
    let mut body = raw.slice(4..);
    if body.remaining() < 4 {
        return Err("startup packet too short".into());
    }
    let version = body.get_u32();
    match version {
        SSL_REQUEST | GSSENC_REQUEST if body.has_remaining() => {
            Err("SSLRequest/GSSENCRequest with trailing bytes".into())
        }
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => {
            if body.remaining() != 8 {
                return Err("CancelRequest must carry exactly a process id and a key".into());
            }
            Ok(StartupPacket::Cancel { pid: body.get_i32(), secret: body.get_i32() })
        }
        v if v >> 16 == 3 => {
            let params = parse_params(&body)?;
            if !params.iter().any(|(k, _)| k == "user") {
                return Err("no PostgreSQL user name specified in startup packet".into());
            }
            Ok(StartupPacket::Startup(Startup { version, params, raw }))
        }
        v => Err(format!(
            "unsupported frontend protocol {}.{}: pgwarden speaks protocol 3",
            v >> 16,
            v & 0xffff
        )),
    }
}

/// `name\0value\0 ... \0`: pairs of C strings, then an empty name.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn cstring<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let nul = b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| "startup packet parameters are not terminated".to_string())?;
        let (s, rest) = b.split_at(nul);
        *b = rest.get(1..).unwrap_or_default();
        Ok(s)
    }
    let mut params = Vec::new();
    loop {
        let name = cstring(&mut body)?;
        if name.is_empty() {
            if !body.is_empty() {
                return Err("trailing bytes after startup parameters".into());
            }
            return Ok(params);
        }
        let value = cstring(&mut body)?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| "startup parameter name is not UTF-8".to_string())?;
        params.push((name, String::from_utf8_lossy(value).into_owned()));
    }
}

/// What a framer found wrong with the next message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 4.
    BadLength(u32),
    /// The length field is above the framer's limit.
    TooLarge { len: usize, max: usize },
    /// The type byte is not one this side may send.
    UnknownTag(u8),
}

/// One whole message: type byte, length, body.
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    /// The whole frame, header included, as received.
    pub frame: Bytes,
}

impl Message {
    pub fn body(&self) -> &[u8] {
        self.frame.get(5..).unwrap_or_default()
    }
}

/// The reading side of one direction: a reusable buffer that the socket is read
/// into and whole messages are split off of, without copying.
pub struct Framer {
    buf: BytesMut,
    /// Largest message length accepted from this peer.
    max_len: usize,
    /// Whether to check type bytes against [`is_frontend_tag`].
    frontend: bool,
}

/// The result of reading more from a peer.
pub enum Fill {
    /// At least one whole message is buffered.
    Ready,
    /// The peer closed the connection; `partial` is true when it did so in the
    /// middle of a message.
    Eof { partial: bool },
}

impl Framer {
    /// A framer for messages from a client.
    pub fn frontend(max_len: usize) -> Self {
        Self { buf: BytesMut::with_capacity(READ_CHUNK), max_len, frontend: true }
    }

    /// A framer for messages from Postgres.
    pub fn backend() -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_len: MAX_BACKEND_MESSAGE,
            frontend: false,
        }
    }

    /// The header of the first buffered message: (type, frame length), or `None`
    /// when fewer than 5 bytes are buffered.
    fn header(&self) -> Result<Option<(u8, usize)>, FrameError> {
        self.header_at(0)
    }

    /// The header of the message starting at `at`, validated.
    fn header_at(&self, at: usize) -> Result<Option<(u8, usize)>, FrameError> {
        let Some(h) = self.buf.get(at..at + 5) else {
            return Ok(None);
        };
        let tag = h[0];
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if self.frontend && !is_frontend_tag(tag) {
            return Err(FrameError::UnknownTag(tag));
        }
        if len < 4 {
            return Err(FrameError::BadLength(len));
        }
        let len = len as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        Ok(Some((tag, len + 1)))
    }

    /// Whether a whole message is buffered; validates its header.
    fn has_message(&self) -> Result<bool, FrameError> {
        Ok(matches!(self.header()?, Some((_, n)) if self.buf.len() >= n))
    }

    /// Reads from `r` until at least one whole message is buffered.
    ///
    /// Cancel safe: bytes read before cancellation stay in the buffer.
    pub async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Result<Fill, FrameError>, std::io::Error> {
        loop {
            match self.has_message() {
                Ok(true) => return Ok(Ok(Fill::Ready)),
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
            let want = match self.header() {
                Ok(Some((_, n))) => (n - self.buf.len()).clamp(READ_CHUNK, GROW_CHUNK),
                _ => READ_CHUNK,
            };
            self.buf.reserve(want);
            if r.read_buf(&mut self.buf).await? == 0 {
                return Ok(Ok(Fill::Eof { partial: !self.buf.is_empty() }));
            }
        }
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Splits off the first message if it is whole.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        match self.header()? {
            Some((tag, n)) if self.buf.len() >= n => {
                Ok(Some(Message { tag, frame: self.buf.split_to(n).freeze() }))
            }
            _ => Ok(None),
        }
    }

    /// Splits off every whole message at the front of the buffer as one `Bytes`,
    /// showing each (type, body) to `inspect` first. Stops before a message that
    /// `inspect` answers `false` for, so the caller can handle it alone (it is
    /// then first in the buffer). Returns the batch, possibly empty, and the
    /// header error that stopped it, if any.
    pub fn split_batch(
        &mut self,
        mut inspect: impl FnMut(u8, &[u8]) -> bool,
    ) -> (Bytes, Option<FrameError>) {
        let mut end = 0;
        let error = loop {
            let (tag, n) = match self.header_at(end) {
                Ok(Some(h)) => h,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            let Some(body) = self.buf.get(end + 5..end + n) else {
                break None;
            };
            if !inspect(tag, body) {
                break None;
            }
            end += n;
        };
        (self.buf.split_to(end).freeze(), error)
    }
}

/// Builds an ErrorResponse (B) or NoticeResponse (B).
pub fn error_response(severity: &str, sqlstate: &str, message: &str) -> Bytes {
    let mut body = BytesMut::with_capacity(32 + message.len());
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', sqlstate), (b'M', message)] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    frame(b'E', &body)
}

/// BackendKeyData (B) with a 4-byte secret (protocol 3.0).
pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&pid.to_be_bytes());
    body[4..].copy_from_slice(&secret.to_be_bytes());
    frame(b'K', &body)
}

/// CancelRequest (F).
pub fn cancel_request(pid: i32, secret: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(12 + secret.len());
    b.put_u32(12 + secret.len() as u32);
    b.put_u32(CANCEL_REQUEST);
    b.put_i32(pid);
    b.put_slice(secret);
    b.freeze()
}

/// Terminate (F).
pub fn terminate() -> Bytes {
    Bytes::from_static(&[b'X', 0, 0, 0, 4])
}

/// A message with type `tag` and `body`.
pub fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(tag);
    b.put_u32(4 + body.len() as u32);
    b.put_slice(body);
    b.freeze()
}

/// AuthenticationSASL (B) with `SCRAM-SHA-256-PLUS` removed from the mechanisms:
/// TLS ends at the proxy, so channel binding to the client's TLS session could
/// never match the proxy's session with Postgres. `None` if `body` is not a
/// well-formed AuthenticationSASL.
pub fn strip_scram_plus(body: &[u8]) -> Option<Bytes> {
    let (code, list) = body.split_at_checked(4)?;
    if code != 10u32.to_be_bytes() {
        return None;
    }
    let (&0, mechanisms) = list.split_last()? else {
        return None;
    };
    let mut out = BytesMut::with_capacity(body.len());
    out.put_slice(code);
    for mechanism in mechanisms.split(|&b| b == 0).filter(|m| !m.is_empty()) {
        if mechanism != b"SCRAM-SHA-256-PLUS" {
            out.put_slice(mechanism);
            out.put_u8(0);
        }
    }
    out.put_u8(0);
    Some(frame(b'R', &out))
}

#[cfg(test)]
mod tests;
