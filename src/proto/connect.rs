//! The session handshake: TCP connect, the TLS handshake when TLS is configured,
//! `ConnectRequest` → `ConnectResponse`, then the auth packets, all bounded by one deadline.
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
use super::sasl::{DigestMd5, SaslDigest, SaslError};
use super::tls::{Stream, TlsConnect, TlsFailure};

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
    /// TLS failed (certificate, alert, or a port that does not speak TLS).
    Tls(TlsFailure),
    /// The SASL exchange could not be completed (not a rejected password: that is
    /// `AuthFailed`).
    Sasl(SaslError),
}

impl HandshakeError {
    /// A failure that trying again (or another member) will not cure: the certificate setup,
    /// or a SASL exchange that cannot work.
    pub fn is_final(&self) -> bool {
        matches!(self, HandshakeError::Sasl(_))
            || matches!(
                self,
                HandshakeError::Tls(
                    TlsFailure::UnknownCa
                        | TlsFailure::Expired
                        | TlsFailure::WrongName(_)
                        | TlsFailure::ClientCertRejected(_)
                )
            )
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Expired => write!(f, "session expired"),
            HandshakeError::AuthFailed => write!(f, "authentication failed"),
            HandshakeError::Timeout => write!(f, "handshake timed out"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Protocol(e) => write!(f, "malformed handshake reply: {e}"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::Sasl(e) => write!(f, "SASL DIGEST-MD5 failed: {e}"),
        }
    }
}

/// An established session on one connection.
pub(crate) struct Established {
    pub stream: Stream,
    /// Bytes already read past the handshake (normally none).
    pub frames: FrameReader,
    pub response: ConnectResponse,
    /// When the `ConnectRequest` was written: the server heard the session no earlier.
    pub sent: Instant,
}

/// Connects to `host:port` and runs the handshake, all within `timeout`.
/// What a handshake sends besides the `ConnectRequest`.
#[derive(Clone, Copy)]
pub(crate) struct Security<'a> {
    /// `AuthPacket` credentials.
    pub auth: &'a [(String, Vec<u8>)],
    /// Encrypt the connection.
    pub tls: Option<&'a dyn TlsConnect>,
    /// Log in with SASL DIGEST-MD5.
    pub sasl: Option<&'a SaslDigest>,
}

#[cfg(test)]
impl Security<'_> {
    /// No TLS, no credentials.
    pub const NONE: Security<'static> = Security {
        auth: &[],
        tls: None,
        sasl: None,
    };
}

pub(crate) async fn handshake(
    host: &str,
    port: u16,
    req: &ConnectRequest,
    sec: Security<'_>,
    max_frame: usize,
    timeout: Duration,
) -> Result<Established, HandshakeError> {
    tokio::time::timeout(timeout, handshake_inner(host, port, req, sec, max_frame))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// An I/O error of the session handshake: a TLS failure when the stream is TLS and the error
/// says so. On a plain stream, a server that hangs up at once is likely a TLS port.
fn io_error(stream: &Stream, host: &str, e: std::io::Error) -> HandshakeError {
    if stream.is_tls() {
        if let Some(f) = super::tls::classify(&e, host, false) {
            return HandshakeError::Tls(f);
        }
    }
    HandshakeError::Io(e)
}

async fn handshake_inner(
    host: &str,
    port: u16,
    req: &ConnectRequest,
    sec: Security<'_>,
    max_frame: usize,
) -> Result<Established, HandshakeError> {
    let auth = sec.auth;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(HandshakeError::Io)?;
    tcp.set_nodelay(true).map_err(HandshakeError::Io)?;
    let mut stream = match sec.tls {
        Some(tls) => tls.connect(host, tcp).await.map_err(HandshakeError::Tls)?,
        None => Stream::Plain(tcp),
    };
    let sent = Instant::now();
    if let Err(e) = stream.write_all(&req.frame()).await {
        return Err(io_error(&stream, host, e));
    }
    if let Err(e) = stream.flush().await {
        return Err(io_error(&stream, host, e));
    }
    let mut frames = FrameReader::new(max_frame);
    let response = {
        let frame = read_frame(&mut stream, &mut frames, host).await?;
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
        if let Err(e) = stream.write_all(&out).await {
            return Err(io_error(&stream, host, e));
        }
        if let Err(e) = stream.flush().await {
            return Err(io_error(&stream, host, e));
        }
        for _ in auth {
            let frame = read_frame(&mut stream, &mut frames, host).await?;
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
    if let Some(creds) = sec.sasl {
        let mut digest = DigestMd5::new(creds);
        let challenge = sasl_round(&mut stream, &mut frames, host, &[]).await?;
        if challenge.is_empty() {
            return Err(HandshakeError::Sasl(SaslError(
                "the server started no SASL exchange: is SASL set up on it (a JAAS Server section with DigestLoginModule, and SASLAuthenticationProvider)?".into(),
            )));
        }
        let response = digest.respond(&challenge).map_err(HandshakeError::Sasl)?;
        let last = sasl_round(&mut stream, &mut frames, host, &response).await?;
        digest.verify_final(&last).map_err(HandshakeError::Sasl)?;
    }
    Ok(Established {
        stream,
        frames,
        response,
        sent,
    })
}

/// One SASL round trip: our token out, the server's token back. A rejection is `AuthFailed`.
async fn sasl_round(
    stream: &mut Stream,
    frames: &mut FrameReader,
    host: &str,
    token: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
    const SASL_XID: i32 = 1;
    let mut f = records::request(op::SASL, |b| b.put_buf(token));
    records::set_xid(&mut f, SASL_XID);
    if let Err(e) = stream.write_all(&f).await {
        return Err(io_error(stream, host, e));
    }
    if let Err(e) = stream.flush().await {
        return Err(io_error(stream, host, e));
    }
    let frame = read_frame(stream, frames, host).await?;
    let h = records::reply_header(&frame).map_err(HandshakeError::Protocol)?;
    if h.err == code::AUTH_FAILED {
        return Err(HandshakeError::AuthFailed);
    }
    if h.xid != SASL_XID || h.err != code::OK {
        return Err(HandshakeError::Protocol(DecodeError::Unexpected(format!(
            "SASL reply with xid {} and error {}",
            h.xid, h.err
        ))));
    }
    let mut r = super::jute::Reader::new(&frame[records::REPLY_HEADER..]);
    r.buf().map_err(HandshakeError::Protocol)
}

/// An `AuthPacket` frame (xid placeholder).
pub(crate) fn auth_packet(scheme: &str, data: &[u8]) -> Vec<u8> {
    records::request(op::AUTH, |b| {
        b.put_i32(0);
        b.put_str(scheme);
        b.put_buf(data);
    })
}

pub(crate) async fn read_frame(
    stream: &mut Stream,
    frames: &mut FrameReader,
    host: &str,
) -> Result<Vec<u8>, HandshakeError> {
    loop {
        if let Some(f) = frames.next_frame().map_err(HandshakeError::Protocol)? {
            return Ok(f.to_vec());
        }
        let n = match stream.read_buf(frames.space(4096)).await {
            Ok(n) => n,
            Err(e) => return Err(io_error(stream, host, e)),
        };
        if n == 0 {
            return Err(HandshakeError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                if stream.is_tls() {
                    "the server closed the TLS connection during the handshake (does it require a client certificate?)"
                } else {
                    "the server closed the connection during the handshake (a TLS secureClientPort? then configure TLS: ClientBuilder::tls, or --tls-ca in the CLI)"
                },
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::jute::JuteWrite;
    use tokio::net::TcpListener;

    /// A fake member that answers one handshake with `timeout_ms`.
    async fn fake_member(timeout_ms: i32) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut frames = FrameReader::new(1024);
            let mut stream = Stream::Plain(s);
            let request = read_frame(&mut stream, &mut frames, "test").await.unwrap();
            let Stream::Plain(mut s) = stream else {
                unreachable!()
            };
            let mut reply = Vec::new();
            let at = crate::proto::codec::start_frame(&mut reply);
            reply.put_i32(0);
            reply.put_i32(timeout_ms);
            reply.put_i64(0x1234);
            reply.put_buf(&[7; 16]);
            reply.put_bool(false);
            crate::proto::codec::finish_frame(&mut reply, at);
            s.write_all(&reply).await.unwrap();
            request
        });
        (port, task)
    }

    fn request() -> ConnectRequest {
        ConnectRequest {
            last_zxid_seen: 42,
            timeout: Duration::from_millis(4000),
            session_id: 0,
            passwd: vec![0; 16],
            read_only: true,
        }
    }

    async fn handshake_with(port: u16) -> Result<Established, HandshakeError> {
        let t = Duration::from_secs(5);
        handshake("127.0.0.1", port, &request(), Security::NONE, 1 << 20, t).await
    }

    #[tokio::test]
    async fn handshake_sets_tcp_nodelay_and_reads_the_session() {
        // With Nagle's algorithm on, a request sent right behind another would wait for the
        // first one's reply, and pipelining would gain nothing.
        let (port, member) = fake_member(4000).await;
        let est = handshake_with(port).await.unwrap();
        assert!(
            est.stream.tcp().nodelay().unwrap(),
            "TCP_NODELAY must be on"
        );
        assert_eq!(est.response.session_id, 0x1234);
        assert_eq!(est.response.passwd, vec![7; 16]);
        assert_eq!(est.response.timeout_ms, 4000);
        let sent = member.await.unwrap();
        let mut r = crate::proto::jute::Reader::new(&sent);
        assert_eq!(r.i32(), Ok(0));
        assert_eq!(r.i64(), Ok(42), "last zxid seen");
        assert_eq!(r.i32(), Ok(4000));
        assert_eq!(r.i64(), Ok(0));
        assert_eq!(r.buf(), Ok(vec![0; 16]));
        assert_eq!(r.bool(), Ok(true), "read-only allowed");
    }

    #[tokio::test]
    async fn a_zero_timeout_means_the_session_expired() {
        let (port, _member) = fake_member(0).await;
        let r = handshake_with(port).await;
        assert!(matches!(r, Err(HandshakeError::Expired)));
    }
}
