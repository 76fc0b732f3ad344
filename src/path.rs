//! Client-side validation of paths, data sizes and connect strings, with ZooKeeper's own rules,
//! so that bad input is a typed error before anything is sent.

use crate::error::{Error, Result};

/// ZooKeeper's default `jute.maxbuffer` bounds a znode's data.
pub const MAX_DATA_LEN: usize = 1024 * 1024 - 1024;

/// Validates a znode path. With `sequential`, a trailing `/` is allowed (the server appends
/// the sequence number).
pub fn validate_path(path: &str, sequential: bool) -> Result<()> {
    let bad = |reason: &'static str| {
        Err(Error::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("path is empty");
    }
    if !path.starts_with('/') {
        return bad("path must start with '/'");
    }
    if path.len() == 1 {
        return if sequential {
            bad("cannot create a sequential node directly under the root name")
        } else {
            Ok(())
        };
    }
    if path.ends_with('/') && !sequential {
        return bad("path must not end with '/'");
    }
    let body = if sequential && path.ends_with('/') {
        &path[1..path.len() - 1]
    } else {
        &path[1..]
    };
    for seg in body.split('/') {
        if seg.is_empty() {
            return bad("empty segment ('//')");
        }
        if seg == "." || seg == ".." {
            return bad("relative segments '.' and '..' are not allowed");
        }
    }
    for c in path.chars() {
        let u = c as u32;
        if u == 0 {
            return bad("null character");
        }
        if (0x01..=0x1f).contains(&u)
            || (0x7f..=0x9f).contains(&u)
            || (0xd800..=0xf8ff).contains(&u)
            || (0xfff0..=0xffff).contains(&u)
        {
            return bad("character not allowed by ZooKeeper");
        }
    }
    Ok(())
}

/// Validates one path segment (a node name): non-empty, no `/`, not `.` or `..`, and only
/// characters ZooKeeper allows. Recipes use it for keys, service names and ids that become
/// node names.
pub fn validate_segment(segment: &str) -> Result<()> {
    let reason = if segment.is_empty() {
        Some("a node name must not be empty")
    } else if segment.contains('/') {
        Some("a node name must not contain '/'")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(Error::InvalidPath {
            path: segment.to_string(),
            reason,
        });
    }
    validate_path(&format!("/{segment}"), false).map_err(|e| match e {
        Error::InvalidPath { reason, .. } => Error::InvalidPath {
            path: segment.to_string(),
            reason,
        },
        e => e,
    })
}

/// Rejects data that the server would refuse.
pub fn validate_data(data: &[u8]) -> Result<()> {
    if data.len() > MAX_DATA_LEN {
        return Err(Error::DataTooLarge {
            len: data.len(),
            max: MAX_DATA_LEN,
        });
    }
    Ok(())
}

/// The parent of a path (`/a/b` → `/a`); `None` for the root.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// Joins a parent and a child name.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// A parsed connect string: `host:port[,host:port...][/chroot]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectString {
    /// `(host, port)` pairs in the given order.
    pub servers: Vec<(String, u16)>,
    /// The chroot, if any.
    pub chroot: Option<String>,
}

impl ConnectString {
    /// Parses and validates; the port defaults to 2181.
    pub fn parse(input: &str) -> Result<ConnectString> {
        let bad = |reason: &str| {
            Err(Error::InvalidConnectString {
                input: input.to_string(),
                reason: reason.into(),
            })
        };
        let s = input.trim();
        if s.is_empty() {
            return bad("empty");
        }
        let (hosts, chroot) = match s.find('/') {
            Some(i) => (&s[..i], Some(&s[i..])),
            None => (s, None),
        };
        let chroot = match chroot {
            Some("/") | None => None,
            Some(c) => {
                if let Err(Error::InvalidPath { reason, .. }) = validate_path(c, false) {
                    return bad(&format!("chroot {c:?}: {reason}"));
                }
                Some(c.to_string())
            }
        };
        let mut servers = Vec::new();
        for part in hosts.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return bad("empty server entry");
            }
            let (host, port) = if let Some(rest) = part.strip_prefix('[') {
                // [ipv6]:port
                let Some(end) = rest.find(']') else {
                    return bad("unclosed '[' in IPv6 address");
                };
                let host = &rest[..end];
                let after = &rest[end + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => p,
                    None if after.is_empty() => "2181",
                    None => return bad("junk after IPv6 address"),
                };
                (host, port)
            } else {
                match part.rsplit_once(':') {
                    Some((h, p)) => (h, p),
                    None => (part, "2181"),
                }
            };
            if host.is_empty() {
                return bad("empty host name");
            }
            if host
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '@')
            {
                return bad(&format!("bad host name {host:?}"));
            }
            let port: u16 = match port.parse() {
                Ok(0) | Err(_) => return bad(&format!("bad port {port:?} (1..65535)")),
                Ok(p) => p,
            };
            servers.push((host.to_string(), port));
        }
        Ok(ConnectString { servers, chroot })
    }

    /// The servers part, as the wire client wants it.
    pub fn servers_string(&self) -> String {
        self.servers
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The whole string back (servers and chroot).
    pub fn to_wire(&self) -> String {
        format!(
            "{}{}",
            self.servers_string(),
            self.chroot.as_deref().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(validate_path("/", false).is_ok());
        assert!(validate_path("/a/b", false).is_ok());
        assert!(validate_path("/a/b-", true).is_ok());
        assert!(validate_path("/a/", true).is_ok());
        for bad in [
            "", "a", "/a/", "//a", "/a//b", "/a/./b", "/a/..", "/a\0b", "/a\u{1}",
        ] {
            assert!(
                matches!(validate_path(bad, false), Err(Error::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn connect_strings() {
        let c = ConnectString::parse("127.0.0.1:2181,localhost:2182/app/x").unwrap();
        assert_eq!(
            c.servers,
            vec![("127.0.0.1".into(), 2181), ("localhost".into(), 2182)]
        );
        assert_eq!(c.chroot.as_deref(), Some("/app/x"));
        assert_eq!(
            ConnectString::parse("h").unwrap().servers,
            vec![("h".into(), 2181)]
        );
        assert_eq!(
            ConnectString::parse("[::1]:5").unwrap().servers,
            vec![("::1".into(), 5)]
        );
        for bad in [
            "", ",", "h:0", "h:abc", "h:99999", ":2181", "h:1,,h:2", "h:1/a//b", "h :1",
        ] {
            assert!(
                matches!(
                    ConnectString::parse(bad),
                    Err(Error::InvalidConnectString { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parents() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
