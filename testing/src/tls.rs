//! Test certificates, generated at test time: a CA, a server certificate for `localhost` and
//! `127.0.0.1` signed by it, a client certificate signed by it, and for the failure cases a
//! second (untrusted) CA with its own server and client certificates, and an expired server
//! certificate. Written as PEM files into a temporary directory that lives as long as the
//! [`TestPki`].

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tempfile::TempDir;

use super::HarnessError;

/// Whether a TLS server asks clients for a certificate (`ssl.clientAuth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client certificate signed by a trusted CA is required (mutual TLS).
    Need,
    /// A client certificate is asked for but not required.
    Want,
    /// No client certificate is asked for.
    None,
}

/// A throwaway public-key infrastructure for TLS tests (see the module docs).
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Other(format!("generating test certificates ({what}): {e}"))
}

fn ca(name: &str) -> Result<Ca, HarnessError> {
    let key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).map_err(|e| err("CA", e))?;
    Ok(Ca { cert, key })
}

/// A leaf certificate for `localhost` and `127.0.0.1` signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, name: &str, expired: bool) -> Result<(String, String), HarnessError> {
    let key = KeyPair::generate().map_err(|e| err("leaf key", e))?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| err(name, e))?;
    params.distinguished_name.push(DnType::CommonName, name);
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(|e| err(name, e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Generates every certificate and writes the PEM files.
    pub fn generate() -> Result<TestPki, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("zkr-pki-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temporary directory", e))?;
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            fs::write(&p, text).map_err(|e| HarnessError::io(format!("writing {}", p.display()), e))
        };
        let good = ca("zkr test CA")?;
        let other = ca("zkr other CA")?;
        write("ca.pem", &good.cert.pem())?;
        write("other-ca.pem", &other.cert.pem())?;
        // ZooKeeper's PEM key store: the private key and the certificate in one file.
        let (cert, key) = leaf(&good, "zkr test server", false)?;
        write("server.pem", &format!("{key}{cert}"))?;
        let (cert, key) = leaf(&good, "zkr expired server", true)?;
        write("expired-server.pem", &format!("{key}{cert}"))?;
        let (cert, key) = leaf(&other, "zkr untrusted server", false)?;
        write("untrusted-server.pem", &format!("{key}{cert}"))?;
        let (cert, key) = leaf(&good, "zkr test client", false)?;
        write("client.pem", &cert)?;
        write("client-key.pem", &key)?;
        let (cert, key) = leaf(&other, "zkr untrusted client", false)?;
        write("untrusted-client.pem", &cert)?;
        write("untrusted-client-key.pem", &key)?;
        Ok(TestPki { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signed the server and client certificates.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Another CA, which signed nothing the servers trust or present.
    pub fn other_ca_pem(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// A client certificate signed by the CA, and its key.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client-key.pem"))
    }

    /// A client certificate signed by the other CA, and its key.
    pub fn untrusted_client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.path("untrusted-client.pem"),
            self.path("untrusted-client-key.pem"),
        )
    }

    /// `zoo.cfg` lines for [`ZkEnsemble::start_tls`](crate::ZkEnsemble::start_tls):
    /// the server presents `server_pem` (a key store file of this PKI: `"server.pem"`,
    /// `"expired-server.pem"` or `"untrusted-server.pem"`), trusts the CA, and asks for client
    /// certificates as `client_auth` says.
    pub fn server_config(&self, server_pem: &str, client_auth: ClientAuth) -> Vec<String> {
        let auth = match client_auth {
            ClientAuth::Need => "need",
            ClientAuth::Want => "want",
            ClientAuth::None => "none",
        };
        vec![
            format!("ssl.keyStore.location={}", self.path(server_pem).display()),
            "ssl.keyStore.type=PEM".to_string(),
            format!("ssl.trustStore.location={}", self.ca_pem().display()),
            "ssl.trustStore.type=PEM".to_string(),
            format!("ssl.clientAuth={auth}"),
        ]
    }
}
