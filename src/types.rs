//! zkr's own ZooKeeper types: recipes and users never see the wire client's.

use std::fmt;
use std::time::Duration;

/// A ZooKeeper session id; prints as hex like ZooKeeper's own logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub i64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Metadata of a znode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stat {
    /// zxid of the transaction that created the node.
    pub czxid: i64,
    /// zxid of the transaction that last modified the node's data.
    pub mzxid: i64,
    /// zxid of the transaction that last added or removed a child.
    pub pzxid: i64,
    /// Creation time, ms since the epoch.
    pub ctime: i64,
    /// Last modification time, ms since the epoch.
    pub mtime: i64,
    /// Number of data changes.
    pub version: i32,
    /// Number of child changes.
    pub cversion: i32,
    /// Number of ACL changes.
    pub aversion: i32,
    /// Session id of the owner if ephemeral, else 0.
    pub ephemeral_owner: i64,
    /// Length of the data.
    pub data_length: i32,
    /// Number of children.
    pub num_children: i32,
}

/// How a node is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    /// Stays until deleted.
    Persistent,
    /// Persistent with a 10-digit sequence suffix appended by the server.
    PersistentSequential,
    /// Deleted when the creating session ends.
    Ephemeral,
    /// Ephemeral with a sequence suffix.
    EphemeralSequential,
    /// Deleted by the server once its last child is gone (ZooKeeper 3.5+).
    Container,
    /// Persistent, deleted by the server after the TTL without changes or children.
    PersistentWithTtl(Duration),
}

impl CreateMode {
    /// Whether the server appends a sequence number.
    pub fn is_sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential | CreateMode::EphemeralSequential
        )
    }

    /// Whether the node dies with its session.
    pub fn is_ephemeral(self) -> bool {
        matches!(
            self,
            CreateMode::Ephemeral | CreateMode::EphemeralSequential
        )
    }
}

/// Permission bits of an ACL entry.
pub mod perms {
    /// Read data and list children.
    pub const READ: i32 = 1;
    /// Set data.
    pub const WRITE: i32 = 2;
    /// Create children.
    pub const CREATE: i32 = 4;
    /// Delete children.
    pub const DELETE: i32 = 8;
    /// Set ACLs.
    pub const ADMIN: i32 = 16;
    /// Everything.
    pub const ALL: i32 = 31;
}

/// One ACL entry: permissions for an identity (`scheme:id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Acl {
    /// Bitwise or of [`perms`].
    pub perms: i32,
    /// `world`, `auth`, `digest`, `ip`, ...
    pub scheme: String,
    /// The identity within the scheme (`anyone`, `user:base64(sha1)`, ...).
    pub id: String,
}

impl Acl {
    /// Everyone may do everything (ZooKeeper's OPEN_ACL_UNSAFE).
    pub fn open() -> Vec<Acl> {
        vec![Acl {
            perms: perms::ALL,
            scheme: "world".into(),
            id: "anyone".into(),
        }]
    }

    /// Only the authenticated creator may do anything (CREATOR_ALL_ACL); needs auth on the client.
    pub fn creator_all() -> Vec<Acl> {
        vec![Acl {
            perms: perms::ALL,
            scheme: "auth".into(),
            id: String::new(),
        }]
    }

    /// Everyone may read (READ_ACL_UNSAFE).
    pub fn read_only() -> Vec<Acl> {
        vec![Acl {
            perms: perms::READ,
            scheme: "world".into(),
            id: "anyone".into(),
        }]
    }
}

/// One operation of an atomic [`multi`](crate::Client::multi).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // fields are named for what they hold
pub enum Op {
    /// Create a node (default ACL of the client).
    Create {
        path: String,
        data: Vec<u8>,
        mode: CreateMode,
    },
    /// Set data, optionally only at an expected version.
    SetData {
        path: String,
        data: Vec<u8>,
        version: Option<i32>,
    },
    /// Delete, optionally only at an expected version.
    Delete { path: String, version: Option<i32> },
    /// Check that the node exists (and has the version, when given).
    Check { path: String, version: Option<i32> },
}

impl Op {
    /// The path the operation works on.
    pub fn path(&self) -> &str {
        match self {
            Op::Create { path, .. }
            | Op::SetData { path, .. }
            | Op::Delete { path, .. }
            | Op::Check { path, .. } => path,
        }
    }
}

/// The result of one operation of a successful multi.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum OpResult {
    /// The created node's actual path (with sequence suffix), and its stat where the server
    /// reports one (ZooKeeper 3.8 answers plain creates in a multi with the path only).
    Created { path: String, stat: Option<Stat> },
    /// The new stat after a set.
    DataSet { stat: Stat },
    /// A delete ran.
    Deleted,
    /// A check passed.
    Checked,
}

/// One read of a [`multi_read`](crate::Client::multi_read).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ReadOp {
    /// Data and stat of a node.
    GetData { path: String },
    /// Children names of a node.
    GetChildren { path: String },
}

impl ReadOp {
    /// The path the read works on.
    pub fn path(&self) -> &str {
        match self {
            ReadOp::GetData { path } | ReadOp::GetChildren { path } => path,
        }
    }
}

/// The outcome of one successful read of a multi-read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ReadResult {
    Data { data: Vec<u8>, stat: Stat },
    Children { children: Vec<String> },
}

/// One identity the server has for a session ([`who_am_i`](crate::Client::who_am_i)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The auth scheme (`ip`, `digest`, `sasl`, ...).
    pub scheme: String,
    /// The identity within the scheme.
    pub user: String,
}

/// Authentication credentials (`scheme`, secret bytes), kept to be re-sent on every reconnect
/// and new session. `Debug` shows the schemes only: secrets never reach logs or error output.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Credentials(pub Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|(scheme, _)| format!("{scheme}:<redacted>")),
            )
            .finish()
    }
}

impl std::ops::Deref for Credentials {
    type Target = [(String, Vec<u8>)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_secret() {
        let c = Credentials(vec![("digest".into(), b"app:s3cret-pw".to_vec())]);
        let shown = format!("{c:?} {c:#?}");
        assert!(shown.contains("digest"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
