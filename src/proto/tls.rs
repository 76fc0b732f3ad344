//! TLS to ZooKeeper's `secureClientPort`, on rustls (ring provider).
//!
//! The protocol layer sees TLS only through [`TlsConnect`] (the split follows tokio-postgres:
//! the connection code knows "a connector that turns a TCP stream into an encrypted one", the
//! rustls specifics live here), and the byte stream it reads and writes is a [`Stream`], plain
//! or encrypted.
//!
//! * The server's certificate must chain to a CA of the configured bundle; the bundle is
//!   required (ZooKeeper ensembles normally use a private CA; pass the system bundle file for a
//!   public one).
//! * Hostname verification is on by default: the certificate must name the host of the
//!   connect string (DNS name or IP address), or the name set with
//!   [`TlsConfig::server_name`]. [`TlsConfig::verify_hostname`] turns only that check off; the
//!   chain is still verified.
//! * A client certificate and key make it mutual TLS (`ssl.clientAuth=need` on the server).
//! * Failures are typed ([`TlsFailure`]) and worded for what went wrong: a certificate signed by
//!   another CA, an expired certificate, a name mismatch, a server that wants a client
//!   certificate, or a port that does not speak TLS (a plaintext `clientPort`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Where PEM data comes from.
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Memory(Vec<u8>),
}

impl Pem {
    fn read(&self, what: &str) -> Result<Vec<u8>, crate::Error> {
        match self {
            Pem::Memory(b) => Ok(b.clone()),
            Pem::File(p) => std::fs::read(p).map_err(|e| {
                crate::Error::InvalidArgument(format!(
                    "TLS: cannot read the {what} file {}: {e}",
                    p.display()
                ))
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Memory(_) => "(in memory)".to_string(),
        }
    }
}

/// TLS settings for [`ClientBuilder::tls`](crate::ClientBuilder::tls): a CA bundle, and for
/// mutual TLS a client certificate and key, from PEM files or from memory. `Debug` never shows
/// key material.
#[derive(Clone, Default)]
pub struct TlsConfig {
    ca: Vec<Pem>,
    client: Option<(Pem, Pem)>,
    server_name: Option<String>,
    no_hostname_check: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca.iter().map(Pem::describe).collect::<Vec<_>>())
            .field(
                "client_cert",
                &self.client.as_ref().map(|(c, _)| c.describe()),
            )
            .field("client_key", &self.client.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .field("verify_hostname", &!self.no_hostname_check)
            .finish()
    }
}

impl TlsConfig {
    /// Empty settings: add at least one CA.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Trust the CA certificates of a PEM file (one or more certificates).
    pub fn ca_pem_file(mut self, path: impl AsRef<Path>) -> TlsConfig {
        self.ca.push(Pem::File(path.as_ref().to_path_buf()));
        self
    }

    /// Trust the CA certificates of PEM text.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> TlsConfig {
        self.ca.push(Pem::Memory(pem.into()));
        self
    }

    /// Present this certificate (chain) and private key, from PEM files (mutual TLS).
    pub fn client_cert_pem_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> TlsConfig {
        self.client = Some((
            Pem::File(cert.as_ref().to_path_buf()),
            Pem::File(key.as_ref().to_path_buf()),
        ));
        self
    }

    /// Present this certificate (chain) and private key, from PEM text (mutual TLS).
    pub fn client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> TlsConfig {
        self.client = Some((Pem::Memory(cert.into()), Pem::Memory(key.into())));
        self
    }

    /// Check the server certificates against this name instead of each server's host in the
    /// connect string (e.g. every member presents `zk.internal`).
    pub fn server_name(mut self, name: &str) -> TlsConfig {
        self.server_name = Some(name.to_string());
        self
    }

    /// Whether the certificate must name the host connected to (default: `true`). Turning it
    /// off keeps the chain check (a certificate of the configured CA is still required) but
    /// accepts any name: only for ensembles whose certificates name no usable host.
    pub fn verify_hostname(mut self, verify: bool) -> TlsConfig {
        self.no_hostname_check = !verify;
        self
    }

    /// Reads and checks the certificates and key; the connector every connection uses.
    pub(crate) fn connector(&self) -> Result<Arc<dyn TlsConnect>, crate::Error> {
        let bad = |m: String| crate::Error::InvalidArgument(format!("TLS: {m}"));
        if self.ca.is_empty() {
            return Err(bad(
                "no CA certificate configured (TlsConfig::ca_pem_file, or --tls-ca in the CLI)"
                    .into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            let pem = ca.read("CA")?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    bad(format!(
                        "the CA file {} is not valid PEM: {e}",
                        ca.describe()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    bad(format!(
                        "a certificate in the CA file {} is not usable: {e}",
                        ca.describe()
                    ))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(bad(format!(
                    "the CA file {} holds no PEM certificate",
                    ca.describe()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?;
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(format!("cannot use the CA certificates: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.no_hostname_check {
            Arc::new(AnyName(webpki))
        } else {
            webpki
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&cert.read("client certificate")?)
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            bad(format!(
                                "the client certificate {} is not valid PEM: {e}",
                                cert.describe()
                            ))
                        })?;
                if certs.is_empty() {
                    return Err(bad(format!(
                        "the client certificate file {} holds no PEM certificate",
                        cert.describe()
                    )));
                }
                // Never show the key's bytes, nor rustls' parse error (which could quote them).
                let key =
                    PrivateKeyDer::from_pem_slice(&key.read("client key")?).map_err(|_| {
                        bad(format!(
                            "the client key {} is not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                            key.describe()
                        ))
                    })?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    bad(format!(
                        "the client certificate and key do not go together: {e}"
                    ))
                })?
            }
        };
        Ok(Arc::new(Rustls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: self.server_name.clone(),
        }))
    }
}

/// Accepts certificates of the configured CA for any name (see
/// [`TlsConfig::verify_hostname`]).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a TLS connection failed, worded for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server's certificate does not chain to a configured CA.
    UnknownCa,
    /// The server's certificate has expired (or is not valid yet).
    Expired,
    /// The certificate does not name the host.
    WrongName(String),
    /// The server refused our certificate, or wanted one and got none.
    ClientCertRejected(String),
    /// The port does not speak TLS (or closed the connection during the TLS handshake).
    NotTls,
    /// Anything else.
    Other(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::UnknownCa => f.write_str(
                "the server's certificate is not signed by a CA in the configured CA bundle (wrong CA file?)",
            ),
            TlsFailure::Expired => f.write_str("the server's certificate has expired or is not valid yet"),
            TlsFailure::WrongName(name) => write!(
                f,
                "the server's certificate is not valid for {name:?} (hostname verification is on: connect by a name the certificate lists, or set TlsConfig::server_name)"
            ),
            TlsFailure::ClientCertRejected(why) => write!(
                f,
                "the server refused the client certificate ({why}); it requires a client certificate signed by a CA it trusts (mutual TLS)"
            ),
            TlsFailure::NotTls => f.write_str(
                "the server closed the connection or answered without TLS during the TLS handshake: is this a plaintext clientPort rather than the secureClientPort?",
            ),
            TlsFailure::Other(m) => f.write_str(m),
        }
    }
}

/// Classifies an I/O error of a TLS connection; `None` when it is not about TLS.
pub(crate) fn classify(e: &io::Error, host: &str, handshaking: bool) -> Option<TlsFailure> {
    if let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return Some(match err {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    TlsFailure::UnknownCa
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    TlsFailure::WrongName(host.to_string())
                }
                other => {
                    TlsFailure::Other(format!("the server's certificate is invalid: {other:?}"))
                }
            },
            rustls::Error::AlertReceived(a) => {
                use rustls::AlertDescription as A;
                match a {
                    A::CertificateRequired
                    | A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::CertificateExpired
                    | A::HandshakeFailure
                    | A::AccessDenied => TlsFailure::ClientCertRejected(format!("alert {a:?}")),
                    other => TlsFailure::Other(format!("the server sent TLS alert {other:?}")),
                }
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                TlsFailure::NotTls
            }
            other => TlsFailure::Other(format!("TLS error: {other}")),
        });
    }
    if handshaking
        && matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
    {
        return Some(TlsFailure::NotTls);
    }
    None
}

/// Turns a TCP connection into a TLS one (the protocol layer's view of TLS).
pub(crate) trait TlsConnect: Send + Sync + 'static {
    /// Runs the TLS handshake with `host` over `tcp`.
    fn connect<'a>(
        &'a self,
        host: &'a str,
        tcp: TcpStream,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Stream, TlsFailure>> + Send + 'a>>;
}

struct Rustls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

impl TlsConnect for Rustls {
    fn connect<'a>(
        &'a self,
        host: &'a str,
        tcp: TcpStream,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Stream, TlsFailure>> + Send + 'a>> {
        Box::pin(async move {
            let name = self.server_name.as_deref().unwrap_or(host);
            let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
                TlsFailure::Other(format!("{name:?} is not a valid TLS server name"))
            })?;
            match self.connector.connect(server_name, tcp).await {
                Ok(s) => Ok(Stream::Tls(Box::new(s))),
                Err(e) => Err(classify(&e, name, true)
                    .unwrap_or_else(|| TlsFailure::Other(format!("TLS handshake failed: {e}")))),
            }
        })
    }
}

/// The byte stream of one connection: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connector in the (cloneable, `Debug`) connection settings.
#[derive(Clone)]
pub(crate) struct TlsHandle(pub Arc<dyn TlsConnect>);

impl fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl Stream {
    /// Splits into a read and a write half owned by one task: a plain stream into the socket's
    /// own halves (no lock between them, writes can be tried without waiting), a TLS stream
    /// through `tokio::io::split`.
    pub fn into_split(self) -> (StreamRead, StreamWrite) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (StreamRead::Plain(r), StreamWrite::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (StreamRead::Tls(r), StreamWrite::Tls(w))
            }
        }
    }
}

type TlsBox = Box<tokio_rustls::client::TlsStream<TcpStream>>;

/// The read half of a [`Stream`].
pub(crate) enum StreamRead {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsBox>),
}

/// The write half of a [`Stream`].
pub(crate) enum StreamWrite {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsBox>),
}

impl StreamWrite {
    /// Writes what can be written without waiting (`None`: nothing, or an error the next
    /// real write reports).
    pub fn try_write_now(&mut self, buf: &[u8]) -> Option<usize> {
        match self {
            StreamWrite::Plain(w) => w.try_write(buf).ok(),
            StreamWrite::Tls(w) => {
                futures::FutureExt::now_or_never(tokio::io::AsyncWriteExt::write(w, buf))
                    .and_then(Result::ok)
            }
        }
    }

    /// Whether writes may leave bytes buffered until a flush (TLS).
    pub fn needs_flush(&self) -> bool {
        matches!(self, StreamWrite::Tls(_))
    }
}

impl AsyncRead for StreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamWrite::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
