//! ZooKeeper's opcodes, request records and reply records (the subset of `zookeeper.jute` a
//! client speaks), and the server's error codes.
//!
//! Requests are encoded straight into a frame ([`request`]): length placeholder, xid
//! placeholder (the connection task assigns xids in send order, [`set_xid`]), opcode, body.
//! Replies are decoded from the bytes after the reply header by the caller that asked, not by
//! the connection task, which only matches replies to requests.

use std::time::Duration;

use super::codec::{finish_frame, start_frame};
use super::jute::{DecodeError, JuteWrite, Reader};
use crate::types::{Acl, CreateMode, Stat};

/// Opcodes (`ZooDefs.OpCode`).
pub(crate) mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_ACL: i32 = 6;
    pub const SET_ACL: i32 = 7;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const PING: i32 = 11;
    pub const GET_CHILDREN2: i32 = 12;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const CREATE_TTL: i32 = 21;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SASL: i32 = 102;
    pub const GET_EPHEMERALS: i32 = 103;
    pub const GET_ALL_CHILDREN_NUMBER: i32 = 104;
    pub const ADD_WATCH: i32 = 106;
    pub const WHO_AM_I: i32 = 107;
    pub const CLOSE_SESSION: i32 = -11;
    pub const ERROR: i32 = -1;
}

/// Reserved xids: replies carrying these are not answers to numbered requests.
pub(crate) mod xid {
    pub const NOTIFICATION: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
}

/// Error codes the server puts in reply headers (`KeeperException.Code`).
pub(crate) mod code {
    pub const OK: i32 = 0;
    pub const CONNECTION_LOSS: i32 = -4;
    pub const NO_NODE: i32 = -101;
    pub const AUTH_FAILED: i32 = -115;
    pub const SESSION_EXPIRED: i32 = -112;
}

/// Watcher event types (`Watcher.Event.EventType`).
pub(crate) mod event {
    pub const CREATED: i32 = 1;
    pub const DELETED: i32 = 2;
    pub const DATA_CHANGED: i32 = 3;
    pub const CHILDREN_CHANGED: i32 = 4;
}

/// `RemoveWatches` watcher types (`Watcher.WatcherType`).
pub(crate) mod watcher_type {
    pub const CHILDREN: i32 = 1;
    pub const DATA: i32 = 2;
    pub const ANY: i32 = 3;
}

/// The 16 bytes of the reply header: xid, zxid, err.
pub(crate) const REPLY_HEADER: usize = 16;

/// Builds a request frame with an xid placeholder.
pub(crate) fn request(opcode: i32, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    let at = start_frame(&mut b);
    b.put_i32(0);
    b.put_i32(opcode);
    body(&mut b);
    finish_frame(&mut b, at);
    b
}

/// Writes the xid into a frame built by [`request`].
pub(crate) fn set_xid(frame: &mut [u8], xid: i32) {
    frame[4..8].copy_from_slice(&xid.to_be_bytes());
}

/// The opcode of a frame built by [`request`].
pub(crate) fn opcode_of(frame: &[u8]) -> i32 {
    i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]])
}

/// Opcode, flags and TTL of a create in `mode`.
pub(crate) fn create_kind(mode: CreateMode) -> (i32, i32, Option<i64>) {
    match mode {
        CreateMode::Persistent => (op::CREATE2, 0, None),
        CreateMode::Ephemeral => (op::CREATE2, 1, None),
        CreateMode::PersistentSequential => (op::CREATE2, 2, None),
        CreateMode::EphemeralSequential => (op::CREATE2, 3, None),
        CreateMode::Container => (op::CREATE_CONTAINER, 4, None),
        CreateMode::PersistentWithTtl(ttl) => (
            op::CREATE_TTL,
            5,
            Some(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        ),
    }
}

/// A create request's body (CreateRequest or CreateTTLRequest).
pub(crate) fn put_create(b: &mut Vec<u8>, path: &str, data: &[u8], acl: &[Acl], mode: CreateMode) {
    let (_, flags, ttl) = create_kind(mode);
    b.put_str(path);
    b.put_buf(data);
    b.put_acls(acl);
    b.put_i32(flags);
    if let Some(ttl) = ttl {
        b.put_i64(ttl);
    }
}

/// `path` + `watch` flag (exists, getData, getChildren2).
pub(crate) fn put_path_watch(b: &mut Vec<u8>, path: &str, watch: bool) {
    b.put_str(path);
    b.put_bool(watch);
}

/// The header before each operation of a multi.
pub(crate) fn put_multi_header(b: &mut Vec<u8>, opcode: i32, done: bool) {
    b.put_i32(opcode);
    b.put_bool(done);
    b.put_i32(-1);
}

/// A parsed reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplyHeader {
    pub xid: i32,
    pub zxid: i64,
    pub err: i32,
}

pub(crate) fn reply_header(frame: &[u8]) -> Result<ReplyHeader, DecodeError> {
    let mut r = Reader::new(frame);
    Ok(ReplyHeader {
        xid: r.i32()?,
        zxid: r.i64()?,
        err: r.i32()?,
    })
}

/// A watch notification (`WatcherEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WatcherEvent {
    pub kind: i32,
    pub state: i32,
    pub path: String,
}

pub(crate) fn watcher_event(body: &[u8]) -> Result<WatcherEvent, DecodeError> {
    let mut r = Reader::new(body);
    Ok(WatcherEvent {
        kind: r.i32()?,
        state: r.i32()?,
        path: r.str()?,
    })
}

/// One result of a multi or multiRead reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MultiResult {
    Created { path: String, stat: Option<Stat> },
    DataSet(Stat),
    Deleted,
    Checked,
    Data(Vec<u8>, Stat),
    Children(Vec<String>),
    Error(i32),
}

pub(crate) fn multi_results(body: &[u8]) -> Result<Vec<MultiResult>, DecodeError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    loop {
        let (kind, done, err) = (r.i32()?, r.bool()?, r.i32()?);
        if done {
            return Ok(out);
        }
        // A multi of n ops has n results; each takes at least 9 header bytes.
        if out.len() > body.len() / 9 {
            return Err(DecodeError::Unexpected("multi reply never ends".into()));
        }
        out.push(match kind {
            op::CREATE => MultiResult::Created {
                path: r.str()?,
                stat: None,
            },
            op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => MultiResult::Created {
                path: r.str()?,
                stat: Some(r.stat()?),
            },
            op::SET_DATA => MultiResult::DataSet(r.stat()?),
            op::DELETE => MultiResult::Deleted,
            op::CHECK => MultiResult::Checked,
            op::GET_DATA => MultiResult::Data(r.buf()?, r.stat()?),
            op::GET_CHILDREN => MultiResult::Children(r.strs()?),
            op::ERROR => {
                let e = r.i32()?;
                let _ = err;
                MultiResult::Error(e)
            }
            other => {
                return Err(DecodeError::Unexpected(format!(
                    "unknown multi result type {other}"
                )))
            }
        });
    }
}

/// The session handshake's request (`ConnectRequest`).
#[derive(Clone, Debug)]
pub(crate) struct ConnectRequest {
    pub last_zxid_seen: i64,
    pub timeout: Duration,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: bool,
}

impl ConnectRequest {
    pub fn frame(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        let at = start_frame(&mut b);
        b.put_i32(0); // protocol version
        b.put_i64(self.last_zxid_seen);
        b.put_i32(i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX));
        b.put_i64(self.session_id);
        b.put_buf(&self.passwd);
        b.put_bool(self.read_only);
        finish_frame(&mut b, at);
        b
    }
}

/// The session handshake's reply (`ConnectResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConnectResponse {
    /// Negotiated timeout in ms; 0 or less means the session has expired.
    pub timeout_ms: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: bool,
}

pub(crate) fn connect_response(body: &[u8]) -> Result<ConnectResponse, DecodeError> {
    let mut r = Reader::new(body);
    let _protocol_version = r.i32()?;
    let timeout_ms = r.i32()?;
    let session_id = r.i64()?;
    let passwd = r.buf()?;
    // Servers before 3.4 do not send the flag.
    let read_only = if r.left() > 0 { r.bool()? } else { false };
    Ok(ConnectResponse {
        timeout_ms,
        session_id,
        passwd,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_layout() {
        let mut f = request(op::GET_DATA, |b| put_path_watch(b, "/a", true));
        set_xid(&mut f, 7);
        assert_eq!(&f[0..4], &(f.len() as i32 - 4).to_be_bytes());
        assert_eq!(&f[4..8], &7i32.to_be_bytes());
        assert_eq!(opcode_of(&f), op::GET_DATA);
        assert_eq!(&f[12..], &[0, 0, 0, 2, b'/', b'a', 1]);
    }

    #[test]
    fn multi_results_parse_and_end() {
        let mut b = Vec::new();
        put_multi_header(&mut b, op::DELETE, false);
        put_multi_header(&mut b, op::ERROR, false);
        b.put_i32(-101);
        put_multi_header(&mut b, -1, true);
        assert_eq!(
            multi_results(&b),
            Ok(vec![MultiResult::Deleted, MultiResult::Error(-101)])
        );
        assert!(multi_results(&b[..b.len() - 1]).is_err());
    }
}
