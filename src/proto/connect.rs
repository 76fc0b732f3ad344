//! The session handshake: TCP connect, `ConnectRequest` → `ConnectResponse`, then the auth
//! packets, each bounded by one deadline.
//!
//! A server answers a request for a session it no longer knows with a zero timeout: that is
//! [`HandshakeError::Expired`], final for the session. A server that refuses the client (it is
//! read-only and the client did not allow that, or it has seen fewer transactions than the
//! client) closes the connection: [`HandshakeError::Io`], worth trying the next member.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::FrameReader;
use super::jute::{DecodeError, JuteWrite};
use super::records::{self, code, connect_response, op, ConnectRequest, ConnectResponse};

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The server no longer knows the session.
    Expired,
    /// The server rejected the credentials.
    AuthFailed,
    /// The deadline passed.
    Timeout,
    /// Resolving, connecting, reading or writing failed, or the server closed the connection.
    Io(std::io::Error),
    /// The server's reply could not be decoded.
    Protocol(DecodeError),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Expired => write!(f, "session expired"),
            HandshakeError::AuthFailed => write!(f, "authentication failed"),
            HandshakeError::Timeout => write!(f, "handshake timed out"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Protocol(e) => write!(f, "malformed handshake reply: {e}"),
        }
    }
}

/// An established session on one connection.
pub(crate) struct Established {
    pub stream: TcpStream,
    /// Bytes already read past the handshake (normally none).
    pub frames: FrameReader,
    pub response: ConnectResponse,
    /// When the `ConnectRequest` was written: the server heard the session no earlier.
    pub sent: Instant,
}

/// Connects to `host:port` and runs the handshake, all within `timeout`.
pub(crate) async fn handshake(
    host: &str,
    port: u16,
    req: &ConnectRequest,
    auth: &[(String, Vec<u8>)],
    max_frame: usize,
    timeout: Duration,
) -> Result<Established, HandshakeError> {
    tokio::time::timeout(timeout, handshake_inner(host, port, req, auth, max_frame))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

async fn handshake_inner(
    host: &str,
    port: u16,
    req: &ConnectRequest,
    auth: &[(String, Vec<u8>)],
    max_frame: usize,
) -> Result<Established, HandshakeError> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(HandshakeError::Io)?;
    stream.set_nodelay(true).map_err(HandshakeError::Io)?;
    let sent = Instant::now();
    stream
        .write_all(&req.frame())
        .await
        .map_err(HandshakeError::Io)?;
    let mut frames = FrameReader::new(max_frame);
    let response = {
        let frame = read_frame(&mut stream, &mut frames).await?;
        connect_response(&frame).map_err(HandshakeError::Protocol)?
    };
    if response.timeout_ms <= 0 {
        return Err(HandshakeError::Expired);
    }
    if !auth.is_empty() {
        let mut out = Vec::new();
        for (scheme, data) in auth {
            let mut f = auth_packet(scheme, data);
            records::set_xid(&mut f, records::xid::AUTH);
            out.extend_from_slice(&f);
        }
        stream.write_all(&out).await.map_err(HandshakeError::Io)?;
        for _ in auth {
            let frame = read_frame(&mut stream, &mut frames).await?;
            let h = records::reply_header(&frame).map_err(HandshakeError::Protocol)?;
            if h.xid != records::xid::AUTH {
                return Err(HandshakeError::Protocol(DecodeError::Unexpected(format!(
                    "reply with xid {} during authentication",
                    h.xid
                ))));
            }
            if h.err == code::AUTH_FAILED {
                return Err(HandshakeError::AuthFailed);
            }
        }
    }
    Ok(Established {
        stream,
        frames,
        response,
        sent,
    })
}

/// An `AuthPacket` frame (xid placeholder).
pub(crate) fn auth_packet(scheme: &str, data: &[u8]) -> Vec<u8> {
    records::request(op::AUTH, |b| {
        b.put_i32(0);
        b.put_str(scheme);
        b.put_buf(data);
    })
}

async fn read_frame(
    stream: &mut TcpStream,
    frames: &mut FrameReader,
) -> Result<Vec<u8>, HandshakeError> {
    loop {
        if let Some(f) = frames.next_frame().map_err(HandshakeError::Protocol)? {
            return Ok(f.to_vec());
        }
        let n = stream
            .read_buf(frames.space(4096))
            .await
            .map_err(HandshakeError::Io)?;
        if n == 0 {
            return Err(HandshakeError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection during the handshake",
            )));
        }
    }
}
