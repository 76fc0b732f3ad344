//! SASL `DIGEST-MD5` (RFC 2831), the client side of ZooKeeper's `digest` SASL login (a server
//! with `SASLAuthenticationProvider` and a JAAS `Server` section using `DigestLoginModule`).
//!
//! The exchange runs inside the session handshake, after the `ConnectResponse`, as `sasl`
//! packets (opcode 102) carrying a token each way:
//!
//! 1. the client sends an empty token; the server answers with its challenge (realm, nonce,
//!    qop, charset, algorithm);
//! 2. the client answers with its digest response (username, realm, nonce, cnonce, nc,
//!    `digest-uri` = `zookeeper/zk-sasl-md5`, qop=auth, the response hash); the server
//!    answers with `rspauth`, which proves it knows the password too, and the session now has
//!    the identity `sasl:USER`.
//!
//! A wrong password makes ZooKeeper 3.8 answer `AuthFailed` and close the connection. The
//! password itself never crosses the wire and never appears in `Debug` or errors.

use std::fmt;

use md5::{Digest as _, Md5};

/// The service and host ZooKeeper's SASL server uses for DIGEST-MD5.
pub(crate) const SERVICE: &str = "zookeeper";
pub(crate) const SERVER_HOST: &str = "zk-sasl-md5";

/// Credentials for SASL DIGEST-MD5; `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SaslDigest {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for SaslDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslDigest")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a DIGEST-MD5 exchange could not go on (never quotes secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaslError(pub String);

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `key=value` pairs of a challenge (values optionally quoted, `\` escapes in quotes).
pub(crate) fn parse_directives(s: &str) -> Result<Vec<(String, String)>, SaslError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(SaslError(format!(
                "malformed DIGEST-MD5 challenge: no value for {:?}",
                key.trim()
            )));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(SaslError(
                            "malformed DIGEST-MD5 challenge: unterminated quoted value".into(),
                        ))
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.push((key.trim().to_ascii_lowercase(), value));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// One DIGEST-MD5 authentication in progress.
pub(crate) struct DigestMd5<'a> {
    creds: &'a SaslDigest,
    digest_uri: String,
    /// What `rspauth` must be, once the response was computed.
    expected_rspauth: Option<String>,
}

impl<'a> DigestMd5<'a> {
    pub fn new(creds: &'a SaslDigest) -> DigestMd5<'a> {
        DigestMd5 {
            creds,
            digest_uri: format!("{SERVICE}/{SERVER_HOST}"),
            expected_rspauth: None,
        }
    }

    /// The response to the server's challenge, with a fresh client nonce.
    pub fn respond(&mut self, challenge: &[u8]) -> Result<Vec<u8>, SaslError> {
        let cnonce = {
            use base64::Engine as _;
            let bytes: [u8; 18] = rand::random();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        self.respond_with_cnonce(challenge, &cnonce)
    }

    /// [`respond`](Self::respond) with a given client nonce (for tests against RFC 2831).
    pub fn respond_with_cnonce(
        &mut self,
        challenge: &[u8],
        cnonce: &str,
    ) -> Result<Vec<u8>, SaslError> {
        let text = std::str::from_utf8(challenge)
            .map_err(|_| SaslError("the DIGEST-MD5 challenge is not UTF-8".into()))?;
        let d = parse_directives(text)?;
        let get = |k: &str| d.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let nonce = get("nonce")
            .ok_or_else(|| SaslError("the DIGEST-MD5 challenge has no nonce".into()))?;
        let qops = get("qop").unwrap_or("auth");
        if !qops.split(',').any(|q| q.trim() == "auth") {
            return Err(SaslError(format!(
                "the server offers DIGEST-MD5 qop {qops:?}; only \"auth\" is supported"
            )));
        }
        if let Some(alg) = get("algorithm") {
            if alg != "md5-sess" {
                return Err(SaslError(format!(
                    "unsupported DIGEST-MD5 algorithm {alg:?}"
                )));
            }
        }
        let realm = get("realm").unwrap_or(SERVER_HOST).to_string();
        let utf8 = get("charset") == Some("utf-8");
        let nc = "00000001";
        let user = &self.creds.user;
        let response = self.digest(&realm, nonce, cnonce, nc, "AUTHENTICATE");
        self.expected_rspauth = Some(self.digest(&realm, nonce, cnonce, nc, ""));
        let mut out = String::new();
        if utf8 {
            out.push_str("charset=utf-8,");
        }
        out.push_str(&format!(
            "username={},realm={},nonce={},nc={nc},cnonce={},digest-uri={},maxbuf=65536,response={response},qop=auth",
            quote(user),
            quote(&realm),
            quote(nonce),
            quote(cnonce),
            quote(&self.digest_uri),
        ));
        Ok(out.into_bytes())
    }

    /// RFC 2831's response value; `a2_method` is `AUTHENTICATE` for the response and empty for
    /// the server's `rspauth`.
    fn digest(&self, realm: &str, nonce: &str, cnonce: &str, nc: &str, a2_method: &str) -> String {
        let secret =
            Md5::digest(format!("{}:{realm}:{}", self.creds.user, self.creds.password).as_bytes());
        let mut a1 = secret.to_vec();
        a1.extend_from_slice(format!(":{nonce}:{cnonce}").as_bytes());
        let ha1 = hex(&Md5::digest(&a1));
        let ha2 = hex(&Md5::digest(
            format!("{a2_method}:{}", self.digest_uri).as_bytes(),
        ));
        hex(&Md5::digest(
            format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}").as_bytes(),
        ))
    }

    /// Checks the server's final token (`rspauth=...`).
    pub fn verify_final(&self, token: &[u8]) -> Result<(), SaslError> {
        let text = std::str::from_utf8(token).unwrap_or_default();
        let d = parse_directives(text)?;
        let got = d.iter().find(|(k, _)| k == "rspauth").map(|(_, v)| v);
        match (got, &self.expected_rspauth) {
            (Some(got), Some(want)) if got == want => Ok(()),
            _ => Err(SaslError(
                "the server's DIGEST-MD5 rspauth does not match: it does not know the password (not the server it claims to be?)"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2831 section 4's example, with its service and host.
    #[test]
    fn matches_the_rfc_2831_example() {
        let creds = SaslDigest {
            user: "chris".into(),
            password: "secret".into(),
        };
        let mut d = DigestMd5::new(&creds);
        d.digest_uri = "imap/elwood.innosoft.com".into();
        let challenge = br#"realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",qop="auth",algorithm=md5-sess,charset=utf-8"#;
        let resp = d.respond_with_cnonce(challenge, "OA6MHXh6VqTrRk").unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(
            resp.contains("response=d388dad90d4bbd760a152321f2143af7"),
            "{resp}"
        );
        assert!(resp.contains(r#"username="chris""#), "{resp}");
        assert!(!resp.contains("secret"), "{resp}");
        d.verify_final(b"rspauth=ea40f60335c427b5527b84dbabcdfffd")
            .unwrap();
        assert!(d.verify_final(b"rspauth=00").is_err());
    }

    #[test]
    fn parses_quoted_and_bare_directives() {
        let d = parse_directives(r#" realm="a\"b", nonce=xyz ,qop="auth,auth-int""#).unwrap();
        assert_eq!(
            d,
            vec![
                ("realm".to_string(), "a\"b".to_string()),
                ("nonce".to_string(), "xyz".to_string()),
                ("qop".to_string(), "auth,auth-int".to_string()),
            ]
        );
        assert!(parse_directives("realm=\"open").is_err());
        assert!(parse_directives("novalue").is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let creds = SaslDigest {
            user: "app".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("app") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
