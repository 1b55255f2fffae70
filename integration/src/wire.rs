//! A raw protocol client: sends exact bytes and records every message that comes
//! back, so that a transcript through the proxy can be compared byte for byte
//! with one made directly to Postgres, and so that tests can send what no real
//! client would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse or NoticeResponse.
    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    /// A field of an ErrorResponse or NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        if self.tag != b'E' && self.tag != b'N' {
            return None;
        }
        self.body
            .split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }
}

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", char::from(self.tag), String::from_utf8_lossy(&self.body))
    }
}

pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// A frontend message.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + body.len());
    b.push(tag);
    b.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// A StartupMessage for protocol 3.0.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u32(196_608);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut b = (4 + body.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&body);
    b
}

/// Query (F).
pub fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstr(sql))
}

/// Parse (F) with no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0u16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind (F) with text parameters (`None` is NULL) and text results.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(cstr(statement));
    b.extend(0u16.to_be_bytes());
    b.extend((params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend((v.len() as i32).to_be_bytes());
                b.extend(v.as_bytes());
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
    }
    b.extend(0u16.to_be_bytes());
    msg(b'B', &b)
}

/// Describe (F) of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend(cstr(name));
    msg(b'D', &b)
}

/// Execute (F); `max_rows` 0 = all.
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(max_rows.to_be_bytes());
    msg(b'E', &b)
}

/// Close (F) of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend(cstr(name));
    msg(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Wire {
    /// Wraps an already connected socket.
    pub fn from_stream(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        Self { stream, buf: BytesMut::new() }
    }

    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self { stream, buf: BytesMut::new() }
    }

    /// Connects and starts up as a trust-authenticated user; returns the
    /// messages up to and including the first ReadyForQuery.
    pub async fn startup(addr: SocketAddr, user: &str, database: &str) -> (Self, Vec<Msg>) {
        let mut w = Self::connect(addr).await;
        w.send(&startup(&[("user", user), ("database", database)])).await;
        let msgs = w.until_ready(1).await;
        assert!(
            msgs.iter().all(|m| m.tag != b'E'),
            "startup failed: {}",
            msgs.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; ")
        );
        (w, msgs)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Sends, ignoring errors (the server may already have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next message, or `None` at EOF. Panics after 30 s of silence.
    pub async fn recv(&mut self) -> Option<Msg> {
        self.recv_within(Duration::from_secs(30)).await.expect("no message within 30s")
    }

    /// The next message within `limit`: `Err` on timeout, `Ok(None)` at EOF.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Option<Msg>, ()> {
        tokio::time::timeout(limit, async {
            loop {
                if self.buf.len() >= 5 {
                    let len =
                        u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                            as usize;
                    if self.buf.len() > len {
                        let frame = self.buf.split_to(len + 1);
                        return Some(Msg { tag: frame[0], body: frame[5..].to_vec() });
                    }
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| ())
    }

    /// Reads a single byte (the answer to SSLRequest / GSSENCRequest).
    pub async fn recv_byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        match self.stream.read_exact(&mut b).await {
            Ok(_) => Some(b[0]),
            Err(_) => None,
        }
    }

    /// Messages up to and including the `n`-th ReadyForQuery (or EOF).
    pub async fn until_ready(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            let Some(m) = self.recv().await else { break };
            seen += usize::from(m.tag == b'Z');
            out.push(m);
        }
        out
    }

    /// Every message until the server closes the connection.
    pub async fn until_eof(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await {
            out.push(m);
        }
        out
    }
}
