//! zkr's own ZooKeeper types: recipes and users never see the wire client's.

use crate::sync::lock;
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

    const LETTERS: [(char, i32); 5] = [
        ('c', CREATE),
        ('d', DELETE),
        ('r', READ),
        ('w', WRITE),
        ('a', ADMIN),
    ];

    /// The letters of `perms` in ZooKeeper's order (`cdrwa`, as `zkCli.sh getAcl` prints them).
    pub fn to_letters(perms: i32) -> String {
        LETTERS
            .iter()
            .filter(|(_, bit)| perms & bit != 0)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Parses letters out of `cdrwa` (any order, case-insensitive); `None` on anything else.
    pub fn from_letters(s: &str) -> Option<i32> {
        let mut perms = 0;
        for ch in s.chars() {
            let bit = LETTERS
                .iter()
                .find(|(c, _)| *c == ch.to_ascii_lowercase())?
                .1;
            perms |= bit;
        }
        Some(perms)
    }
}

/// One ACL entry: permissions for an identity (`scheme:id`).
///
/// `Display` and [`FromStr`](std::str::FromStr) use the readable form `scheme:id:perms`, e.g.
/// `world:anyone:r`, `digest:app:HASH:cdrwa`, `ip:10.0.0.0/8:rw`, `auth::cdrwa`. `Debug`
/// hides the password hash of `digest` identities (a SHA-1 of `user:password` can be
/// brute-forced), showing only the user.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Acl {
    /// Bitwise or of [`perms`].
    pub perms: i32,
    /// `world`, `auth`, `digest`, `ip`, ...
    pub scheme: String,
    /// The identity within the scheme (`anyone`, `user:base64(sha1)`, ...).
    pub id: String,
}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = if self.scheme == "digest" {
            match self.id.split_once(':') {
                Some((user, _)) => format!("{user}:<hash redacted>"),
                None => "<redacted>".to_string(),
            }
        } else {
            self.id.clone()
        };
        f.debug_struct("Acl")
            .field("perms", &format_args!("{}", perms::to_letters(self.perms)))
            .field("scheme", &self.scheme)
            .field("id", &id)
            .finish()
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.scheme,
            self.id,
            perms::to_letters(self.perms)
        )
    }
}

impl std::str::FromStr for Acl {
    type Err = crate::Error;

    /// Parses `scheme:id:perms`; the id may itself contain `:` (a digest id does).
    fn from_str(s: &str) -> Result<Acl, Self::Err> {
        let bad = |why: &str| {
            crate::Error::InvalidArgument(format!(
                "ACL {s:?}: {why} (expected scheme:id:perms, e.g. world:anyone:r or \
                 digest:app:HASH:cdrwa; perms are letters of cdrwa)"
            ))
        };
        let (scheme, rest) = s.split_once(':').ok_or_else(|| bad("no scheme"))?;
        let (id, letters) = rest.rsplit_once(':').ok_or_else(|| bad("no permissions"))?;
        if scheme.is_empty() {
            return Err(bad("empty scheme"));
        }
        let perms = perms::from_letters(letters).ok_or_else(|| bad("unknown permission"))?;
        if perms == 0 {
            return Err(bad("no permission given"));
        }
        Ok(Acl::new(perms, scheme, id))
    }
}

impl Acl {
    /// An entry granting `perms` to `scheme:id`.
    pub fn new(perms: i32, scheme: &str, id: &str) -> Acl {
        Acl {
            perms,
            scheme: scheme.to_string(),
            id: id.to_string(),
        }
    }

    /// The `digest` identity of `user` with `password`, exactly as ZooKeeper's
    /// `DigestAuthenticationProvider` computes it: `user:base64(sha1("user:password"))`. A
    /// session that authenticated with `digest` and `user:password` has this identity.
    pub fn digest(user: &str, password: &str) -> String {
        use base64::Engine as _;
        use sha1::Digest as _;
        let hash = sha1::Sha1::digest(format!("{user}:{password}").as_bytes());
        format!(
            "{user}:{}",
            base64::engine::general_purpose::STANDARD.encode(hash)
        )
    }

    /// An entry granting `perms` to the digest identity of `user` with `password` (see
    /// [`Acl::digest`]).
    pub fn digest_user(user: &str, password: &str, perms: i32) -> Acl {
        Acl::new(perms, "digest", &Acl::digest(user, password))
    }

    /// Everyone may do everything (ZooKeeper's `OPEN_ACL_UNSAFE`).
    pub fn open() -> Vec<Acl> {
        vec![Acl::new(perms::ALL, "world", "anyone")]
    }

    /// Only the identities the creating session authenticated as may do anything
    /// (`CREATOR_ALL_ACL`); the client needs credentials (a create without any fails with
    /// [`Error::InvalidAcl`](crate::Error::InvalidAcl)).
    pub fn creator_all() -> Vec<Acl> {
        vec![Acl::new(perms::ALL, "auth", "")]
    }

    /// Everyone may read, nobody may change anything (`READ_ACL_UNSAFE`).
    pub fn read_only() -> Vec<Acl> {
        vec![Acl::new(perms::READ, "world", "anyone")]
    }

    /// Parses a list of entries separated by commas or whitespace (`world:anyone:r,auth::cdrwa`).
    pub fn parse_list(s: &str) -> Result<Vec<Acl>, crate::Error> {
        let acl: Vec<Acl> = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if acl.is_empty() {
            return Err(crate::Error::InvalidArgument(
                "an ACL must have at least one entry".into(),
            ));
        }
        Ok(acl)
    }
}

/// Chooses the ACL of every node a client creates, by path (like Curator's `ACLProvider`):
/// set one with [`ClientBuilder::acl_provider`](crate::ClientBuilder::acl_provider). The nodes
/// that recipes create (lock nodes, election nodes, their parent containers) go through it
/// too. A handle made with [`Client::with_acl`](crate::Client::with_acl) and an explicit
/// [`Client::create_with_acl`](crate::Client::create_with_acl) take precedence.
pub trait AclProvider: Send + Sync + 'static {
    /// The ACL for a new node at `path` (the client's path, below any chroot).
    fn acl_for_path(&self, path: &str) -> Vec<Acl>;
}

impl<F> AclProvider for F
where
    F: Fn(&str) -> Vec<Acl> + Send + Sync + 'static,
{
    fn acl_for_path(&self, path: &str) -> Vec<Acl> {
        self(path)
    }
}

/// One operation of an atomic [`multi`](crate::Client::multi).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // fields are named for what they hold
pub enum Op {
    /// Create a node (with the ACL the client's handle gives new nodes at that path).
    Create {
        path: String,
        data: Vec<u8>,
        mode: CreateMode,
    },
    /// Create a node with this ACL.
    CreateWithAcl {
        path: String,
        data: Vec<u8>,
        mode: CreateMode,
        acl: Vec<Acl>,
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
            | Op::CreateWithAcl { path, .. }
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

/// The credentials of a client, shared by its connection tasks: every handshake (reconnect or
/// new session) sends what is in it then, so `Client::add_auth` outlives its session.
#[derive(Clone, Default, Debug)]
pub(crate) struct AuthStore(std::sync::Arc<std::sync::Mutex<Credentials>>);

impl AuthStore {
    pub fn new(c: Credentials) -> AuthStore {
        AuthStore(std::sync::Arc::new(std::sync::Mutex::new(c)))
    }

    /// The credentials now.
    pub fn snapshot(&self) -> Credentials {
        lock(&self.0).clone()
    }

    /// Adds one (once: the same scheme and secret are kept a single time).
    pub fn add(&self, scheme: &str, data: &[u8]) {
        let mut c = lock(&self.0);
        if !c.0.iter().any(|(s, d)| s == scheme && d == data) {
            c.0.push((scheme.to_string(), data.to_vec()));
        }
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
        let store = AuthStore::new(c);
        let shown = format!("{store:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn digest_matches_zookeeper() {
        // From ZooKeeper: DigestAuthenticationProvider.generateDigest("super:test").
        assert_eq!(
            Acl::digest("super", "test"),
            "super:D/InIHSb7yEEbrWz8b9l71RjZJU="
        );
    }

    #[test]
    fn acl_text_form_round_trips_and_debug_hides_hashes() {
        let a: Acl = "digest:app:abc/def=:cdrwa".parse().unwrap();
        assert_eq!(a, Acl::new(perms::ALL, "digest", "app:abc/def="));
        assert_eq!(a.to_string(), "digest:app:abc/def=:cdrwa");
        let shown = format!("{a:?}");
        assert!(!shown.contains("abc/def"), "{shown}");
        assert!(shown.contains("app"), "{shown}");
        assert_eq!(
            "world:anyone:r".parse::<Acl>().unwrap(),
            Acl::read_only()[0]
        );
        assert_eq!("auth::cdrwa".parse::<Acl>().unwrap(), Acl::creator_all()[0]);
        assert_eq!(
            Acl::parse_list("world:anyone:r, ip:10.0.0.0/8:RW").unwrap(),
            vec![
                Acl::new(perms::READ, "world", "anyone"),
                Acl::new(perms::READ | perms::WRITE, "ip", "10.0.0.0/8"),
            ]
        );
        for bad in [
            "",
            "world",
            "world:anyone",
            "world:anyone:x",
            ":a:r",
            "world:anyone:",
        ] {
            assert!(bad.parse::<Acl>().is_err(), "{bad:?} parsed");
        }
    }
}
